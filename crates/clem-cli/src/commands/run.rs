//! `clem run -g GAME -m MODEL...`: plays a game's instances and writes clemcore 3.7's results layout, each
//! completed episode scored (scores.json) as `clem score` would score it.
//!
//! Where clembench keeps the game (`./GAME/clemgame.json`, a clembench checkout), its folder is recorded as
//! run.json's `game_path` and its `in/instances.json` is played, as clemcore does; else the game's own copy.
//! `-i` takes a path (".json" may be left out) or, as clemcore, an instances file name in `./GAME/in/`.
//!
//! Progress goes to stderr: a bar when it is a terminal, else one line per episode (`clem: episode n/N
//! (experiment, instance id) model: status, elapsed, ETA`), so logs of unattended runs show it. `clem.log` in
//! the run's folder (`<results>/<models>/`, appended to by each invocation) holds those lines, one line per model
//! call, and what the run printed at the end. A run stops early, exit status 1, once 3 instances in a row failed
//! to reach the model's provider with the same message (the reason is printed and logged).
//! At the end a summary table goes to stdout, one row per
//! experiment plus a total:
//! `experiment  instances  completed  skipped  errors  success  aborted  main_score` (main_score: the mean Main
//! Score over played episodes, aborted ones being NaN); then one row per model of this invocation's calls:
//! `model  calls  uncounted  prompt_tokens  completion_tokens  model_seconds  cost` (uncounted: calls whose
//! backend counted no tokens; cost in dollars from `--prices FILE`, a JSON object `{"MODEL":
//! {"input_per_million": 2.5, "output_per_million": 10}}`, else the entry's `model_config.pricing`; `-` without
//! prices). run_summary.json holds the same per model (`usage`) and per game across invocations
//! (`usage_by_game`).
//! Exit status 1 when any instance ended in an error (error.json); a model that plays badly is no error.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clem_backends::{load_model, LoadContext};
use clem_core::registry::Registry;
use clem_core::{GenArgs, ModelSpec, Pricing};
use clem_run::game::Game;
use clem_run::games::{find_game, names_nearest};
use clem_run::runner::{self, Call, InstanceResult, Progress, RunOptions, Status};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::context::Ctx;

#[derive(clap::Args)]
pub struct Args {
    /// The game to play (clemrs's games: `clem list games`).
    #[arg(short, long)]
    game: String,
    /// Model selectors (names or JSON objects): one per player, or one for every player.
    #[arg(short, long = "models", num_args = 1.., required = true, value_name = "MODEL")]
    models: Vec<String>,
    /// Sampling temperature.
    #[arg(short, long, default_value_t = 0.0)]
    temperature: f64,
    /// Maximum tokens per reply.
    #[arg(short = 'l', long = "max-tokens", alias = "max_tokens", default_value_t = 300)]
    max_tokens: u32,
    /// Instances played side by side; their requests go to a model as one batch.
    #[arg(short, long = "batch-size", alias = "batch_size", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: u32,
    /// The results root folder.
    #[arg(short, long = "results-dir", alias = "results_dir", default_value = "results")]
    results_dir: PathBuf,
    /// Only this experiment.
    #[arg(short, long = "experiment-name", alias = "experiment_name", value_name = "EXPERIMENT")]
    experiment: Option<String>,
    /// An instances file: a path (".json" may be left out), or a name in ./GAME/in/ as clemcore takes it.
    #[arg(short, long = "instances", alias = "instances_filename", value_name = "FILE")]
    instances: Option<PathBuf>,
    /// Skip instances that have completed.json; redo the others.
    #[arg(long)]
    resume: bool,
    /// Prices per model name, for the run's cost: `{"MODEL": {"input_per_million": 2.5, "output_per_million":
    /// 10}}` (dollars per million prompt / completion tokens); before each entry's `model_config.pricing`.
    #[arg(long, value_name = "FILE")]
    prices: Option<PathBuf>,
}

/// `--prices FILE`: model name -> prices; errors name the file and the model.
fn read_prices(path: &Path) -> anyhow::Result<BTreeMap<String, Pricing>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let serde_json::Value::Object(map) = value else {
        bail!(
            "{}: expected an object of model names to {{\"input_per_million\", \"output_per_million\"}}",
            path.display()
        );
    };
    map.iter()
        .map(|(model, v)| match Pricing::from_value(v) {
            Ok(p) => Ok((model.clone(), p)),
            Err(m) => bail!("{}: {model}: {m}", path.display()),
        })
        .collect()
}

/// What `clem run -g NAME` says about a game clemrs does not have.
fn unknown_game(name: &str) -> String {
    let nearest = names_nearest(name);
    let hint = clem_core::suggest::did_you_mean(name, nearest.iter().copied());
    let sep = if hint.is_empty() { ";" } else { "" };
    format!(
        "unknown game {name:?}{hint}{sep} clemrs plays: {}.\nclembench's Python games run under clemcore with clemrs's \
         backends: in your clembench folder, `pip install clemcore <clemrs checkout>/crates/clem-py`, then \
         `python -m clemrs.clemcore install`, then clemcore's `clem run -g {name} -m MODEL`",
        nearest.join(", ")
    )
}

/// The game's folder in a clembench checkout (`./GAME/clemgame.json`), as clemcore finds it, made absolute.
fn game_folder(game: &dyn Game) -> Option<PathBuf> {
    let dir = Path::new(game.name());
    if !dir.join("clemgame.json").is_file() {
        return None;
    }
    Some(std::env::current_dir().map_or_else(|_| dir.to_path_buf(), |cwd| cwd.join(dir)))
}

/// The instances file `-i` names: the path, the path with ".json", or clemcore's `./GAME/in/NAME.json`.
fn instances_path(given: &Path, game: &dyn Game) -> anyhow::Result<PathBuf> {
    let mut tried = vec![given.to_path_buf()];
    if given.extension().is_none_or(|e| e != "json") {
        tried.push(PathBuf::from(format!("{}.json", given.display())));
    }
    if given.components().count() == 1 {
        let in_game = Path::new(game.name()).join("in").join(given);
        if in_game.extension().is_none_or(|e| e != "json") {
            tried.push(PathBuf::from(format!("{}.json", in_game.display())));
        }
        tried.push(in_game);
    }
    if let Some(found) = tried.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    let tried: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
    bail!("instances file {}: not found (tried {})", given.display(), tried.join(", "))
}

pub fn run(args: Args, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let Some(game) = find_game(&args.game) else {
        bail!("{}", unknown_game(&args.game));
    };
    let folder = game_folder(game);
    let experiments = match (&args.instances, &folder) {
        (Some(path), _) => clem_run::instances::load(&instances_path(path, game)?)?,
        (None, Some(dir)) => clem_run::instances::load(&dir.join("in").join("instances.json"))?,
        (None, None) => clem_run::instances::parse(game.default_instances(), &format!("{} (built in)", game.name()))?,
    };

    let selectors = args
        .models
        .iter()
        .map(|s| ModelSpec::parse_selector(s).with_context(|| format!("model selector {s:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Scripted and human players need neither registry nor keys: do not fail on a broken key.json for them.
    let needs_registry = selectors.iter().any(|s| !s.is_mock() && !s.is_human());
    let registry = if needs_registry { ctx.registry()? } else { crate::context::keep(Registry::default()) };
    let keys = if needs_registry { ctx.keys()? } else { Default::default() };
    let load_ctx = LoadContext { keys, threads: ctx.threads, ..Default::default() };
    let prices = args.prices.as_deref().map(read_prices).transpose()?.unwrap_or_default();
    let mut models = Vec::with_capacity(selectors.len());
    for s in &selectors {
        models.push(load_model(registry, s, &load_ctx)?);
    }

    let opts = RunOptions {
        results_dir: args.results_dir.clone(),
        experiment: args.experiment.clone(),
        experiments,
        batch_size: args.batch_size as usize,
        resume: args.resume,
        gen_args: GenArgs::new(args.temperature, args.max_tokens),
        game_path: folder,
        prices,
    };
    let names: Vec<&str> = models.iter().map(|m| m.name()).collect();
    let mut bar = Bar::new(game.name(), names.join(", "), &opts.gen_args);
    let summary = runner::run(game, &models, &opts, &mut bar)?;

    let report =
        format!("{}\n{}results: {}", table(&summary.results), usage_table(&summary.usage), summary.run_path.display());
    println!("{report}");
    bar.log(&report);
    for r in &summary.results {
        let Some(why) = &r.error else { continue };
        let at = format!("{}/{}", r.experiment, clem_run::recorder::instance_dir(r.game_id));
        let kind = if r.status == Status::Error { "error" } else { "warning" };
        bar.say(&format!("clem: {kind}: {at}: {why}"));
    }
    if let Some(why) = &summary.stopped {
        bar.say(&format!("clem: error: run {why}"));
    }
    Ok(if summary.has_errors() || summary.stopped.is_some() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Progress: a bar on a terminal, else a line per episode on stderr; both, and each model call, in clem.log.
struct Bar {
    bar: Option<ProgressBar>,
    /// stderr is a terminal: the bar shows progress, no lines.
    terminal: bool,
    errors: usize,
    done: usize,
    to_run: usize,
    started: std::time::Instant,
    game: String,
    models: String,
    args: String,
    log: Option<File>,
}

impl Bar {
    fn new(game: &str, models: String, args: &GenArgs) -> Self {
        Bar {
            bar: None,
            terminal: std::io::stderr().is_terminal(),
            errors: 0,
            done: 0,
            to_run: 0,
            started: std::time::Instant::now(),
            game: game.to_string(),
            models,
            args: serde_json::to_string(args).unwrap_or_default(),
            log: None,
        }
    }

    /// Appends lines to clem.log, each with the local time (a log that cannot be written is dropped, once).
    fn log(&mut self, text: &str) {
        let Some(file) = &mut self.log else { return };
        let now = chrono::Local::now().format("%Y-%m-%d %H:%M:%S");
        let mut out = String::new();
        for line in text.lines() {
            out.push_str(&format!("{now} {line}\n"));
        }
        if let Err(e) = file.write_all(out.as_bytes()) {
            eprintln!("clem: warning: clem.log: {e}; the run goes on without it");
            self.log = None;
        }
    }

    /// A line on stderr and in clem.log.
    fn say(&mut self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
        self.log(line);
    }
}

/// `H:MM:SS`.
fn clock(d: std::time::Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

impl Progress for Bar {
    fn folder(&mut self, run_path: &Path) {
        let path = run_path.join("clem.log");
        match std::fs::OpenOptions::new().create(true).append(true).open(&path) {
            Ok(f) => self.log = Some(f),
            Err(e) => eprintln!("clem: warning: {}: {e}; the run goes on without a log", path.display()),
        }
        let header = format!("clem run -g {} -m {} ({})", self.game, self.models, self.args);
        self.log(&header);
    }

    fn begin(&mut self, to_run: usize, skipped: usize) {
        self.to_run = to_run;
        self.started = std::time::Instant::now();
        if skipped > 0 {
            self.say(&format!("clem: resuming: {skipped} instance(s) already completed, {to_run} to run"));
        }
        if !self.terminal {
            self.say(&format!("clem: {to_run} episode(s) to play, model {}", self.models));
            return;
        }
        let bar = ProgressBar::with_draw_target(Some(to_run as u64), ProgressDrawTarget::stderr());
        if let Ok(style) =
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} instances, {msg}, {per_sec}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message("0 errors");
        self.bar = Some(bar);
    }

    fn call(&mut self, call: &Call) {
        let failed = match (&call.first_error, call.failed) {
            (Some(e), n) => format!(", {n} failed: {e}"),
            (None, _) => String::new(),
        };
        let line = format!("call {}: {} request(s), {:.3} s{failed}", call.model, call.requests, call.seconds);
        self.log(&line);
    }

    fn instance_done(&mut self, result: &InstanceResult) {
        self.done += 1;
        if result.status == Status::Error {
            self.errors += 1;
        }
        let elapsed = self.started.elapsed();
        let left = self.to_run.saturating_sub(self.done) as u32;
        let eta = elapsed.checked_div(self.done as u32).unwrap_or_default() * left;
        let status = match (&result.status, &result.error) {
            (Status::Error, Some(e)) => format!("error: {e}"),
            (s, _) => s.as_str().to_string(),
        };
        let line = format!(
            "clem: episode {}/{} ({} {}) {}: {status}, elapsed {}, ETA {}",
            self.done,
            self.to_run,
            result.experiment,
            clem_run::recorder::instance_dir(result.game_id),
            self.models,
            clock(elapsed),
            clock(eta)
        );
        match &self.bar {
            Some(bar) => {
                bar.set_message(format!("{} error{}", self.errors, if self.errors == 1 { "" } else { "s" }));
                bar.inc(1);
                self.log(&line);
            }
            None => self.say(&line),
        }
    }

    fn end(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// Columns left-aligned first, right-aligned after, two spaces apart; one line each.
fn aligned(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].len()).chain([header[i].len()]).max().unwrap_or(0))
        .collect();
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| if i == 0 { format!("{c:<w$}", w = widths[i]) } else { format!("{c:>w$}", w = widths[i]) })
            .collect();
        parts.join("  ") + "\n"
    };
    let mut out = line(header.iter().map(|s| s.to_string()).collect());
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

/// Each model's calls in this invocation; `uncounted`: answered calls whose backend counted no tokens (the
/// totals lack theirs); cost `-` without prices.
fn usage_table(usage: &[clem_run::usage::ModelUsage]) -> String {
    let header = ["model", "calls", "uncounted", "prompt_tokens", "completion_tokens", "model_seconds", "cost"];
    let rows = usage
        .iter()
        .map(|u| {
            vec![
                u.model.clone(),
                u.calls.to_string(),
                u.calls_without_usage.to_string(),
                u.usage.prompt_tokens.to_string(),
                u.usage.completion_tokens.to_string(),
                format!("{:.1}", u.seconds),
                u.cost.map_or_else(|| "-".to_string(), |c| format!("${c:.4}")),
            ]
        })
        .collect();
    aligned(&header, rows)
}

fn table(results: &[InstanceResult]) -> String {
    let mut names: Vec<&str> = Vec::new();
    for r in results {
        if !names.contains(&r.experiment.as_str()) {
            names.push(&r.experiment);
        }
    }
    let header = ["experiment", "instances", "completed", "skipped", "errors", "success", "aborted", "main_score"];
    let mut rows: Vec<Vec<String>> = Vec::new();
    let row = |label: &str, rs: Vec<&InstanceResult>| {
        let mean = runner::mean_played(rs.iter().filter_map(|r| r.main_score()))
            .map_or_else(|| "-".to_string(), |m| format!("{m:.1}"));
        vec![
            label.to_string(),
            rs.len().to_string(),
            rs.iter().filter(|r| r.status == Status::Completed).count().to_string(),
            rs.iter().filter(|r| r.status == Status::Skipped).count().to_string(),
            rs.iter().filter(|r| r.status == Status::Error).count().to_string(),
            rs.iter().filter(|r| r.success()).count().to_string(),
            rs.iter().filter(|r| r.aborted()).count().to_string(),
            mean,
        ]
    };
    for name in &names {
        rows.push(row(name, results.iter().filter(|r| r.experiment == *name).collect()));
    }
    rows.push(row("total", results.iter().collect()));
    aligned(&header, rows)
}
