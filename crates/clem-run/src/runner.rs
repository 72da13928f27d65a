//! The runner: plays a game's instances with loaded models and records everything through the recorder.
//!
//! Episodes run in chunks of `batch_size`: each step collects the pending turn of every live episode in the
//! chunk and sends them to each player model together (`generate_batch_response`; `generate_response` when
//! there is one). Every call's record is on disk before the next request goes out. With `resume`, instances
//! whose folder holds `completed.json` are skipped and every other instance is redone from scratch.
//!
//! Players answer as in clemcore's `Player.__call__`: a game's scripted players, and the `mock` model (unless
//! its selector scripts `replies`), with the game's custom response; a model with its backend's reply. Calls
//! of the reserved players (`mock`, `human`) are recorded as clemcore records them: the context message as
//! the prompt, `{"clem_player": {"response", "model_name"}}` as the response. A completed episode is scored
//! by its game (scores.json), as `clem score` would score it.
//!
//! A run locks its folder (`<results>/<models>/`) for its whole length: a second run there is refused, naming
//! the process that holds it. Model names must be plain path segments, as they name that folder.
//!
//! Each model's calls, tokens, time and cost are counted ([`crate::usage`]) and written to run_summary.json
//! only: clemcore's files stay as clemcore writes them.
//!
//! A run stops early, with the reason ([`RunSummary::stopped`]), once [`STOP_AFTER_CONNECTION_FAILURES`]
//! instances in a row failed because a provider could not be reached, each with the same message: the server is
//! down, and every further instance would fail the same way (and be redone by `--resume` anyway).
//!
//! The [`Progress`] observer hears of the run's folder, each model call ([`Call`]) and each finished instance.
//!
//! `CLEM_TEST_CALL_DELAY_MS` (undocumented for users; for tests that interrupt a run) makes the runner wait
//! that many milliseconds before each request and each scripted reply.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clem_core::{GenArgs, LoadedModel, Message, ModelError, ModelSpec, Pricing};
use serde_json::{json, Map, Value};

use crate::fsio::{self, now_iso, FsError};
use crate::game::{Game, GameMaster, Log, LogEntry, Plays, Turn};
use crate::instances::{Experiment, Instance};
use crate::pyjson;
use crate::recorder::{self, EpisodeRecorder, PlayerInfo, ResultsFolder, RunFile};
use crate::scores;
use crate::usage::{self, ModelUsage};

/// What to run and where to write it.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub results_dir: PathBuf,
    /// Only this experiment (`-e`).
    pub experiment: Option<String>,
    /// The instances to play (the game's default file or `-i`).
    pub experiments: Vec<Experiment>,
    pub batch_size: usize,
    pub resume: bool,
    pub gen_args: GenArgs,
    /// The game's folder, recorded as run.json's `game_path` as clemcore records it; `None`: `clemrs:<game>`.
    pub game_path: Option<PathBuf>,
    /// Prices by model name (`--prices`), before each entry's own `model_config.pricing`.
    pub prices: BTreeMap<String, Pricing>,
}

/// A run that cannot start or cannot write its results.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("{game} needs {needed} player model(s) (or one for all), but {given} were given")]
    Players { game: String, needed: usize, given: usize },
    #[error("no experiment named {0:?} in the instances (there are: {1})")]
    NoExperiment(String, String),
    #[error(
        "model name {0:?} cannot name a results folder: it must be one plain path segment (not empty, \
         not \".\" or \"..\", without '/', '\\' or NUL)"
    )]
    ModelName(String),
}

/// How an instance ended in this invocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Completed,
    Error,
    /// Already completed before a `--resume`.
    Skipped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Completed => "completed",
            Status::Error => "error",
            Status::Skipped => "skipped",
        }
    }
}

/// One instance's result.
#[derive(Clone, Debug)]
pub struct InstanceResult {
    pub experiment: String,
    pub game_id: u64,
    pub status: Status,
    /// `episode scores` of scores.json (completed or skipped instances); NaN as [`pyjson`] markers.
    pub scores: Option<Map<String, Value>>,
    /// Why the instance failed, or why a completed one has no scores.
    pub error: Option<String>,
    /// It failed because a model's provider could not be reached (no connection).
    pub connection_failure: bool,
}

impl InstanceResult {
    fn score(&self, key: &str) -> Option<f64> {
        self.scores.as_ref().and_then(|s| s.get(key)).and_then(pyjson::as_f64)
    }
    pub fn success(&self) -> bool {
        self.score(scores::SUCCESS) == Some(1.0)
    }
    pub fn aborted(&self) -> bool {
        self.score(scores::ABORTED) == Some(1.0)
    }
    /// The Main Score: NaN for an aborted episode, as clembench scores it.
    pub fn main_score(&self) -> Option<f64> {
        self.score(scores::BENCH_SCORE)
    }
}

/// Told about the run as it goes (the CLI draws a progress bar from it).
pub trait Progress {
    /// The run's folder (`<results>/<models>/`), locked and ready, before anything is played.
    fn folder(&mut self, _run_path: &Path) {}
    fn begin(&mut self, _to_run: usize, _skipped: usize) {}
    /// One request (or batch of requests) to a model has returned.
    fn call(&mut self, _call: &Call) {}
    fn instance_done(&mut self, _result: &InstanceResult) {}
    fn end(&mut self) {}
}

/// One model call: a request, or a batch of `requests` sent together.
#[derive(Clone, Debug)]
pub struct Call {
    pub model: String,
    pub requests: usize,
    /// Requests of the batch that failed, and the first failure's message.
    pub failed: usize,
    pub first_error: Option<String>,
    pub seconds: f64,
}

/// Instances in a row that fail to reach a provider, with one message, after which a run stops.
pub const STOP_AFTER_CONNECTION_FAILURES: usize = 3;

/// A progress observer that shows nothing.
pub struct NoProgress;
impl Progress for NoProgress {}

/// What a run did.
#[derive(Clone, Debug)]
pub struct RunSummary {
    pub game: String,
    pub run_path: PathBuf,
    pub results: Vec<InstanceResult>,
    pub duration: Duration,
    /// Each model's calls in this invocation (one row per model name).
    pub usage: Vec<ModelUsage>,
    /// Why the run stopped before playing every instance (a provider that cannot be reached).
    pub stopped: Option<String>,
}

/// The mean of the values that are not NaN (the Main Score over the episodes played), if there are any.
pub fn mean_played(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let played: Vec<f64> = values.into_iter().filter(|v| !v.is_nan()).collect();
    (!played.is_empty()).then(|| played.iter().sum::<f64>() / played.len() as f64)
}

impl RunSummary {
    pub fn count(&self, status: Status) -> usize {
        self.results.iter().filter(|r| r.status == status).count()
    }
    pub fn has_errors(&self) -> bool {
        self.count(Status::Error) > 0
    }

    /// run_summary.json: totals and one row per instance; `mean_main_score` over the episodes played.
    pub fn to_json(&self, models: &[&str], batch_size: usize, resumed: bool) -> Value {
        let rows: Vec<Value> = self
            .results
            .iter()
            .map(|r| {
                let mut row = Map::new();
                row.insert("experiment".into(), json!(r.experiment));
                row.insert("game_id".into(), json!(r.game_id));
                row.insert("instance".into(), json!(recorder::instance_dir(r.game_id)));
                row.insert("status".into(), json!(r.status.as_str()));
                if let Some(s) = &r.scores {
                    row.insert("episode scores".into(), Value::Object(s.clone()));
                }
                if let Some(e) = &r.error {
                    row.insert("error".into(), json!(e));
                }
                Value::Object(row)
            })
            .collect();
        let mean = mean_played(self.results.iter().filter_map(InstanceResult::main_score));
        json!({
            "game_name": self.game,
            "models": models,
            "finished": now_iso(),
            "duration_seconds": self.duration.as_secs_f64(),
            "batch_size": batch_size,
            "resume": resumed,
            "totals": {
                "instances": self.results.len(),
                "completed": self.count(Status::Completed),
                "skipped": self.count(Status::Skipped),
                "errors": self.count(Status::Error),
                "successes": self.results.iter().filter(|r| r.success()).count(),
                "aborted": self.results.iter().filter(|r| r.aborted()).count(),
                "mean_main_score": mean,
            },
            "usage": self.usage.iter().map(ModelUsage::to_json).collect::<Vec<_>>(),
            "instances": rows,
        })
    }
}

struct Episode<'e> {
    experiment: &'e Experiment,
    instance: &'e Instance,
    master: Box<dyn GameMaster>,
    recorder: EpisodeRecorder,
    /// Each player's memory of the dialogue (clemcore's `Player._messages`).
    histories: Vec<Vec<Message>>,
    /// A turn waiting for a model's reply.
    pending: Option<Turn>,
    turns: usize,
    done: bool,
}

/// Turns an episode may take before the runner stops it (a game that never ends).
const MAX_TURNS: usize = 10_000;

/// The error type written to error.json for a model failure.
fn model_error_type(e: &ModelError) -> &'static str {
    match e {
        ModelError::ContextExceeded(_) => "ContextExceededError",
        ModelError::Config { .. } => "ModelConfigError",
        ModelError::Backend { .. } | ModelError::Cancelled { .. } => "BackendError",
    }
}

/// The spec recorded for a model: clemcore records a reserved player (`mock`, `human`) by its name and its
/// pseudo-backend only (`_player_programmed`, `_player_human`), whatever else the selector held.
pub fn recorded_spec(spec: &ModelSpec) -> ModelSpec {
    let backend = if spec.is_mock() {
        "_player_programmed"
    } else if spec.is_human() {
        "_player_human"
    } else {
        return spec.clone();
    };
    let mut map = Map::new();
    map.insert("model_name".into(), json!(spec.model_name().unwrap_or_default()));
    map.insert("backend".into(), json!(backend));
    ModelSpec::new(map)
}

/// Plays `game` with `models` (one per model player, or one for all of them).
pub fn run(
    game: &dyn Game,
    models: &[LoadedModel],
    opts: &RunOptions,
    progress: &mut dyn Progress,
) -> Result<RunSummary, RunError> {
    let clock = Instant::now();
    let needed = game.players();
    let player_model: Vec<usize> = match models.len() {
        1 => vec![0; needed],
        n if n == needed => (0..n).collect(),
        n => return Err(RunError::Players { game: game.name().into(), needed, given: n }),
    };
    let names: Vec<&str> = models.iter().map(LoadedModel::name).collect();
    if let Some(bad) = names.iter().find(|n| !fsio::is_plain_segment(n)) {
        return Err(RunError::ModelName(bad.to_string()));
    }
    let folder = ResultsFolder { root: opts.results_dir.clone(), run_dir: recorder::run_identifier(&names) };
    let specs: Vec<_> = models.iter().map(|m| (recorded_spec(m.spec()), opts.gen_args.clone())).collect();
    let infos = recorder::model_infos(&specs);

    let experiments: Vec<&Experiment> = match &opts.experiment {
        None => opts.experiments.iter().collect(),
        Some(name) => {
            let found: Vec<&Experiment> = opts.experiments.iter().filter(|e| &e.name == name).collect();
            if found.is_empty() {
                let all: Vec<&str> = opts.experiments.iter().map(|e| e.name.as_str()).collect();
                return Err(RunError::NoExperiment(name.clone(), all.join(", ")));
            }
            found
        }
    };

    // Held until this function returns: a second run on this folder now would clear instances under this one.
    let _lock = fsio::FolderLock::acquire(&folder.run_path())?;
    let game_path =
        opts.game_path.as_ref().map_or_else(|| format!("clemrs:{}", game.name()), |p| p.display().to_string());
    let run_file = RunFile::start(&folder, &infos, game.name(), &game_path)?;
    let mut results = Vec::new();
    let mut todo: Vec<(&Experiment, &Instance)> = Vec::new();
    let mut total = 0;
    for exp in &experiments {
        for inst in &exp.instances {
            total += 1;
            let dir = folder.instance_path(game.name(), &exp.name, inst.game_id);
            if opts.resume && dir.join("completed.json").is_file() {
                let scores = scores::read_episode_scores(&dir.join("scores.json")).ok();
                results.push(InstanceResult {
                    experiment: exp.name.clone(),
                    game_id: inst.game_id,
                    status: Status::Skipped,
                    scores,
                    error: None,
                    connection_failure: false,
                });
            } else {
                todo.push((exp, inst));
            }
        }
    }
    progress.folder(&folder.run_path());
    progress.begin(todo.len(), results.len());

    let delay =
        std::env::var("CLEM_TEST_CALL_DELAY_MS").ok().and_then(|v| v.parse::<u64>().ok()).map(Duration::from_millis);
    let calls = RefCell::new(
        models
            .iter()
            .map(|m| {
                let pricing =
                    opts.prices.get(m.name()).copied().or_else(|| Pricing::from_spec(m.spec()).ok().flatten());
                ModelUsage::new(m.name(), pricing)
            })
            .collect::<Vec<_>>(),
    );
    let ctx = Ctx {
        game,
        models,
        player_model: &player_model,
        folder: &folder,
        infos: &infos,
        args: &opts.gen_args,
        delay,
        calls: &calls,
        progress: &RefCell::new(&mut *progress),
    };
    // The last connection failure's message and how many instances in a row ended with it.
    let mut streak: Option<(String, usize)> = None;
    let mut stopped = None;
    for chunk in todo.chunks(opts.batch_size.max(1)) {
        for result in ctx.play_chunk(chunk)? {
            ctx.progress.borrow_mut().instance_done(&result);
            streak = match (result.connection_failure, &result.error, streak.take()) {
                (true, Some(e), Some((last, n))) if *e == last => Some((last, n + 1)),
                (true, Some(e), _) => Some((e.clone(), 1)),
                _ => None,
            };
            results.push(result);
        }
        if let Some((why, n)) = streak.as_ref().filter(|(_, n)| *n >= STOP_AFTER_CONNECTION_FAILURES) {
            let left = todo.len() - results.iter().filter(|r| r.status != Status::Skipped).count();
            stopped = Some(format!(
                "stopped after {n} instances in a row failed to reach the model's provider ({why}); {left} \
                 instance(s) not played: start the server or fix the address, then rerun with --resume"
            ));
            break;
        }
    }
    progress.end();
    run_file.finish(total)?;

    // Report in instance order whatever ran or was skipped.
    results.sort_by(|a, b| {
        (exp_pos(&experiments, &a.experiment), a.game_id).cmp(&(exp_pos(&experiments, &b.experiment), b.game_id))
    });
    let summary = RunSummary {
        game: game.name().into(),
        run_path: folder.run_path(),
        results,
        duration: clock.elapsed(),
        usage: usage::merged(&calls.into_inner()),
        stopped,
    };
    let path = folder.run_path().join("run_summary.json");
    // The former summary's usage of other games (and, resumed, of this one) stays: clem eval sums it.
    let previous = path.is_file().then(|| scores::read(&path).ok()).flatten();
    let mut json = summary.to_json(&names, opts.batch_size.max(1), opts.resume);
    if let Value::Object(o) = &mut json {
        let by_game = usage::usage_by_game(previous.as_ref(), game.name(), &summary.usage, opts.resume);
        o.insert("usage_by_game".into(), by_game);
    }
    scores::write(&path, &json)?;
    Ok(summary)
}

fn exp_pos(experiments: &[&Experiment], name: &str) -> usize {
    experiments.iter().position(|e| e.name == name).unwrap_or(usize::MAX)
}

struct Ctx<'a> {
    game: &'a dyn Game,
    models: &'a [LoadedModel],
    /// The model of each model player.
    player_model: &'a [usize],
    folder: &'a ResultsFolder,
    infos: &'a Value,
    args: &'a GenArgs,
    delay: Option<Duration>,
    /// Each model's calls so far (index as `models`).
    calls: &'a RefCell<Vec<ModelUsage>>,
    progress: &'a RefCell<&'a mut dyn Progress>,
}

/// Who answers a turn.
enum Answerer {
    /// The game's custom response, recorded under this model name.
    Scripted(String),
    /// This model (index into the run's models).
    Model(usize),
}

/// The recorded response object of a reserved player's call (clemcore's `Player.__call__`).
fn clem_player(text: &str, model_name: &str) -> Value {
    json!({"clem_player": {"response": text, "model_name": model_name}})
}

/// The recorded prompt of a reserved player's call: the context message.
fn context_message(context: &str) -> Value {
    json!({"role": "user", "content": context})
}

impl Ctx<'_> {
    /// Plays a chunk of instances side by side until each has completed or failed.
    fn play_chunk<'e>(&self, chunk: &[(&'e Experiment, &'e Instance)]) -> Result<Vec<InstanceResult>, RunError> {
        let mut finished = Vec::new();
        let mut live: Vec<Episode<'e>> = Vec::new();
        for (exp, inst) in chunk {
            match self.start(exp, inst)? {
                Ok(ep) => live.push(ep),
                Err(result) => finished.push(result),
            }
        }
        loop {
            // Every live episode plays its scripted turns, then ends or waits for a model.
            for ep in &mut live {
                if let Some(result) = self.advance(ep)? {
                    finished.push(result);
                }
            }
            live.retain(|ep| !ep.done);
            if live.is_empty() {
                return Ok(finished);
            }
            // One request per model: that model's pending turns as one batch.
            let mut used: Vec<usize> = live.iter().filter_map(|ep| self.pending_model(ep)).collect();
            used.sort_unstable();
            used.dedup();
            for m in used {
                let idx: Vec<usize> = (0..live.len()).filter(|&i| self.pending_model(&live[i]) == Some(m)).collect();
                let batch: Vec<Vec<Message>> = idx
                    .iter()
                    .map(|&i| {
                        let ep = &live[i];
                        let turn = ep.pending.clone().unwrap_or(Turn { player: 0, context: String::new() });
                        let mut msgs = ep.histories.get(turn.player).cloned().unwrap_or_default();
                        msgs.push(Message::user(turn.context));
                        msgs
                    })
                    .collect();
                if let Some(d) = self.delay {
                    std::thread::sleep(d);
                }
                let model = &self.models[m];
                let started = Instant::now();
                let mut out = if batch.len() == 1 {
                    vec![model.generate_response(&batch[0], self.args)]
                } else {
                    model.generate_batch_response(&batch, self.args)
                };
                out.resize_with(batch.len(), || {
                    Err(ModelError::backend(model.name(), "the backend returned fewer replies than requests"))
                });
                let seconds = started.elapsed();
                if let Some(row) = self.calls.borrow_mut().get_mut(m) {
                    row.record(&out, seconds);
                }
                let failures: Vec<&ModelError> = out.iter().filter_map(|r| r.as_ref().err()).collect();
                self.progress.borrow_mut().call(&Call {
                    model: model.name().to_string(),
                    requests: out.len(),
                    failed: failures.len(),
                    first_error: failures.first().map(|e| e.to_string()),
                    seconds: seconds.as_secs_f64(),
                });
                for (&i, result) in idx.iter().zip(out) {
                    let ep = &mut live[i];
                    let Some(turn) = ep.pending.take() else { continue };
                    let outcome = match result {
                        Ok(generation) => {
                            let spec = model.spec();
                            let (prompt, response) = if spec.is_mock() || spec.is_human() {
                                (context_message(&turn.context), clem_player(&generation.response_text, model.name()))
                            } else {
                                (generation.prompt, generation.response)
                            };
                            self.answer(ep, turn, &generation.response_text, prompt, response)?
                        }
                        Err(e) => {
                            ep.recorder.fail(model_error_type(&e), &e.to_string())?;
                            ep.done = true;
                            let mut result = self.result(ep, Status::Error, None, Some(e.to_string()));
                            result.connection_failure = clem_backends::http::error::is_connection_failure(&e);
                            Some(result)
                        }
                    };
                    finished.extend(outcome);
                }
                live.retain(|ep| !ep.done);
            }
        }
    }

    /// The model a pending turn waits for.
    fn pending_model(&self, ep: &Episode<'_>) -> Option<usize> {
        let turn = ep.pending.as_ref()?;
        match self.answerer(ep.master.players().get(turn.player)?.plays) {
            Some(Answerer::Model(m)) => Some(m),
            _ => None,
        }
    }

    /// Who answers for a player; `None` for a model player the game does not declare.
    fn answerer(&self, plays: Plays) -> Option<Answerer> {
        match plays {
            Plays::Programmatic => Some(Answerer::Scripted("programmatic".into())),
            Plays::Model(i) => {
                let m = *self.player_model.get(i)?;
                let model = &self.models[m];
                // The mock answers as the game scripts it, unless its selector scripts its own replies.
                if model.spec().is_mock() && model.spec().get("replies").is_none() {
                    Some(Answerer::Scripted(model.name().to_string()))
                } else {
                    Some(Answerer::Model(m))
                }
            }
        }
    }

    /// Plays an episode's scripted turns until it ends (its result) or waits for a model (`pending`).
    fn advance(&self, ep: &mut Episode<'_>) -> Result<Option<InstanceResult>, RunError> {
        loop {
            if ep.turns >= MAX_TURNS {
                return self.fail(ep, "GameError", format!("the game did not end within {MAX_TURNS} turns"));
            }
            let turn = match ep.master.next_turn() {
                Ok(Some(turn)) => turn,
                Ok(None) => return self.complete(ep).map(Some),
                Err(e) => return self.fail(ep, "GameError", e.message),
            };
            let plays = ep.master.players().get(turn.player).map(|p| p.plays);
            match plays.and_then(|p| self.answerer(p)) {
                None => {
                    let msg = format!("the game master asked for player {} of {}", turn.player + 1, ep.histories.len());
                    return self.fail(ep, "GameError", msg);
                }
                Some(Answerer::Model(_)) => {
                    ep.pending = Some(turn);
                    return Ok(None);
                }
                Some(Answerer::Scripted(model_name)) => {
                    if let Some(d) = self.delay {
                        std::thread::sleep(d);
                    }
                    let text = ep.master.custom_response(turn.player, &turn.context);
                    let (prompt, response) = (context_message(&turn.context), clem_player(&text, &model_name));
                    if let Some(result) = self.answer(ep, turn, &text, prompt, response)? {
                        return Ok(Some(result));
                    }
                }
            }
        }
    }

    /// Records a player's reply and the call that produced it, then lets the game master judge it.
    fn answer(
        &self,
        ep: &mut Episode<'_>,
        turn: Turn,
        text: &str,
        prompt: Value,
        response: Value,
    ) -> Result<Option<InstanceResult>, RunError> {
        ep.turns += 1;
        ep.recorder.log_call(turn.player, prompt, response);
        if let Some(h) = ep.histories.get_mut(turn.player) {
            h.push(Message::user(turn.context));
            h.push(Message::assistant(text));
        }
        let mut log = Log::default();
        let stepped = ep.master.step(text, &mut log);
        apply(&mut ep.recorder, log);
        if let Err(e) = stepped {
            return self.fail(ep, "GameError", e.message);
        }
        ep.recorder.flush()?;
        Ok(None)
    }

    /// Ends an episode properly: its records, its scores, then completed.json.
    fn complete(&self, ep: &mut Episode<'_>) -> Result<InstanceResult, RunError> {
        ep.done = true;
        ep.recorder.log_game_end();
        let instance = Value::Object(ep.instance.data.clone());
        match self.game.score(&ep.experiment.params, &instance, ep.recorder.interactions()) {
            Ok(scores) => {
                ep.recorder.complete(Some(&scores))?;
                let episode = pyjson::object(&scores, "episode scores").cloned();
                Ok(self.result(ep, Status::Completed, episode, None))
            }
            Err(e) => {
                ep.recorder.complete(None)?;
                Ok(self.result(ep, Status::Completed, None, Some(format!("not scored: {e}"))))
            }
        }
    }

    /// Ends an episode with an error.json.
    fn fail(&self, ep: &mut Episode<'_>, error: &str, message: String) -> Result<Option<InstanceResult>, RunError> {
        ep.done = true;
        ep.recorder.fail(error, &message)?;
        Ok(Some(self.result(ep, Status::Error, None, Some(message))))
    }

    /// Prepares an instance: a clean folder, the game master, then (as clemcore's `on_game_start`)
    /// instance.json, experiment.json and the recorder. The inner error is an instance that cannot be played
    /// (recorded in error.json).
    fn start<'e>(
        &self,
        exp: &'e Experiment,
        inst: &'e Instance,
    ) -> Result<Result<Episode<'e>, InstanceResult>, RunError> {
        let game = self.game.name();
        let dir = self.folder.instance_path(game, &exp.name, inst.game_id);
        recorder::clear_instance_dir(&dir)?;
        let fail = |message: String| -> Result<InstanceResult, RunError> {
            recorder::write_error(&dir, "GameError", &message)?;
            Ok(InstanceResult {
                experiment: exp.name.clone(),
                game_id: inst.game_id,
                status: Status::Error,
                scores: None,
                error: Some(message),
                connection_failure: false,
            })
        };
        let mut log = Log::default();
        let master = match self.game.master(exp, inst, &mut log) {
            Ok(m) => m,
            Err(e) => return Ok(Err(fail(e.message)?)),
        };
        let mut players = Vec::new();
        for (i, p) in master.players().iter().enumerate() {
            let model_name = match self.answerer(p.plays) {
                Some(Answerer::Scripted(name)) => name,
                Some(Answerer::Model(m)) => self.models[m].name().to_string(),
                None => {
                    let msg = format!(
                        "Player {} plays model player {:?}, the game declares {}",
                        i + 1,
                        p.plays,
                        self.player_model.len()
                    );
                    return Ok(Err(fail(msg)?));
                }
            };
            players.push(PlayerInfo { name: format!("Player {}", i + 1), game_role: p.role.clone(), model_name });
        }
        fsio::write_json(&dir.join("instance.json"), &Value::Object(inst.data.clone()))?;
        recorder::write_experiment_file(&self.folder.experiment_path(game, &exp.name), &exp.params, game, self.infos)?;
        let mut recorder =
            EpisodeRecorder::new(&dir, game, &exp.name, inst.game_id, &self.folder.run_dir, self.infos, &players);
        apply(&mut recorder, log);
        Ok(Ok(Episode {
            experiment: exp,
            instance: inst,
            master,
            recorder,
            histories: vec![Vec::new(); players.len()],
            pending: None,
            turns: 0,
            done: false,
        }))
    }

    fn result(
        &self,
        ep: &Episode<'_>,
        status: Status,
        scores: Option<Map<String, Value>>,
        error: Option<String>,
    ) -> InstanceResult {
        InstanceResult {
            experiment: ep.experiment.name.clone(),
            game_id: ep.instance.game_id,
            status,
            scores,
            error,
            connection_failure: false,
        }
    }
}

/// Hands what a game master logged to the recorder, in order.
fn apply(recorder: &mut EpisodeRecorder, mut log: Log) {
    for entry in log.drain() {
        match entry {
            LogEntry::Event { from, to, action } => recorder.log_event(&from, &to, action),
            LogEntry::Key { key, value } => recorder.log_key(&key, value),
            LogEntry::NextRound => recorder.log_next_round(),
            LogEntry::GameEnd => recorder.log_game_end(),
        }
    }
}
