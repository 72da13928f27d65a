//! The runner: plays a game's instances with loaded models and records everything through the recorder.
//!
//! Episodes run in chunks of `batch_size`: each step collects the pending turn of every live episode in the
//! chunk and sends them to each player model together (`generate_batch_response`; `generate_response` when
//! there is one). Every call's record is on disk before the next request goes out. With `resume`, instances
//! whose folder holds `completed.json` are skipped and every other instance is redone from scratch.
//!
//! A run locks its folder (`<results>/<models>/`) for its whole length: a second run there is refused, naming
//! the process that holds it. Model names must be plain path segments, as they name that folder.
//!
//! `CLEM_TEST_CALL_DELAY_MS` (undocumented for users; for tests that interrupt a run) makes the runner wait
//! that many milliseconds before each request.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clem_core::{GenArgs, LoadedModel, Message, ModelError};
use serde_json::{json, Map, Value};

use crate::fsio::{self, now_iso, FsError};
use crate::game::{Game, GameMaster, Outcome};
use crate::instances::{Experiment, Instance};
use crate::recorder::{self, EpisodeRecorder, PlayerInfo, ResultsFolder, RunFile};

/// What to run and where to write it.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub results_dir: PathBuf,
    /// Only this experiment (`-e`).
    pub experiment: Option<String>,
    /// The instances to play (the game's default file or `-i`).
    pub experiments: Vec<Experiment>,
    pub batch_size: usize,
    pub resume: bool,
    pub gen_args: GenArgs,
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
    /// `episode scores` of scores.json (completed or skipped instances).
    pub scores: Option<Value>,
    pub error: Option<String>,
}

impl InstanceResult {
    fn score(&self, key: &str) -> Option<f64> {
        self.scores.as_ref().and_then(|s| s.get(key)).and_then(Value::as_f64)
    }
    pub fn success(&self) -> bool {
        self.score("Success") == Some(1.0)
    }
    pub fn aborted(&self) -> bool {
        self.score("Aborted") == Some(1.0)
    }
    pub fn main_score(&self) -> Option<f64> {
        self.score("Main Score")
    }
}

/// Told about the run as it goes (the CLI draws a progress bar from it).
pub trait Progress {
    fn begin(&mut self, _to_run: usize, _skipped: usize) {}
    fn instance_done(&mut self, _result: &InstanceResult) {}
    fn end(&mut self) {}
}

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
}

impl RunSummary {
    pub fn count(&self, status: Status) -> usize {
        self.results.iter().filter(|r| r.status == status).count()
    }
    pub fn has_errors(&self) -> bool {
        self.count(Status::Error) > 0
    }

    /// run_summary.json: totals and one row per instance.
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
                    row.insert("episode scores".into(), s.clone());
                }
                if let Some(e) = &r.error {
                    row.insert("error".into(), json!(e));
                }
                Value::Object(row)
            })
            .collect();
        let scored: Vec<f64> = self.results.iter().filter_map(InstanceResult::main_score).collect();
        let mean =
            if scored.is_empty() { Value::Null } else { json!(scored.iter().sum::<f64>() / scored.len() as f64) };
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
            "instances": rows,
        })
    }
}

struct Episode<'e> {
    experiment: &'e Experiment,
    instance: &'e Instance,
    master: Box<dyn GameMaster>,
    recorder: EpisodeRecorder,
    players: Vec<String>,
    histories: Vec<Vec<Message>>,
    /// The context of the pending turn, memorised with the reply.
    pending: Option<(usize, String)>,
    done: bool,
}

/// The error type written to error.json for a model failure.
fn model_error_type(e: &ModelError) -> &'static str {
    match e {
        ModelError::ContextExceeded(_) => "ContextExceededError",
        ModelError::Config { .. } => "ModelConfigError",
        ModelError::Backend { .. } => "BackendError",
    }
}

/// Plays `game` with `models` (one per player, or one for all players).
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
    let specs: Vec<_> = models.iter().map(|m| (m.spec().clone(), opts.gen_args.clone())).collect();
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
    let run_file = RunFile::start(&folder, &infos, game.name(), &game.game_path())?;
    let mut results = Vec::new();
    let mut todo: Vec<(&Experiment, &Instance)> = Vec::new();
    let mut total = 0;
    for exp in &experiments {
        for inst in &exp.instances {
            total += 1;
            let dir = folder.instance_path(game.name(), &exp.name, inst.game_id);
            if opts.resume && dir.join("completed.json").is_file() {
                let scores =
                    fsio::read_json(&dir.join("scores.json")).ok().and_then(|s| s.get("episode scores").cloned());
                results.push(InstanceResult {
                    experiment: exp.name.clone(),
                    game_id: inst.game_id,
                    status: Status::Skipped,
                    scores,
                    error: None,
                });
            } else {
                todo.push((exp, inst));
            }
        }
    }
    progress.begin(todo.len(), results.len());

    let delay =
        std::env::var("CLEM_TEST_CALL_DELAY_MS").ok().and_then(|v| v.parse::<u64>().ok()).map(Duration::from_millis);
    let ctx =
        Ctx { game, models, player_model: &player_model, folder: &folder, infos: &infos, args: &opts.gen_args, delay };
    for chunk in todo.chunks(opts.batch_size.max(1)) {
        for result in ctx.play_chunk(chunk)? {
            progress.instance_done(&result);
            results.push(result);
        }
    }
    progress.end();
    run_file.finish(total)?;

    // Report in instance order whatever ran or was skipped.
    results.sort_by(|a, b| {
        (exp_pos(&experiments, &a.experiment), a.game_id).cmp(&(exp_pos(&experiments, &b.experiment), b.game_id))
    });
    let summary =
        RunSummary { game: game.name().into(), run_path: folder.run_path(), results, duration: clock.elapsed() };
    fsio::write_json(
        &folder.run_path().join("run_summary.json"),
        &summary.to_json(&names, opts.batch_size.max(1), opts.resume),
    )?;
    Ok(summary)
}

fn exp_pos(experiments: &[&Experiment], name: &str) -> usize {
    experiments.iter().position(|e| e.name == name).unwrap_or(usize::MAX)
}

struct Ctx<'a> {
    game: &'a dyn Game,
    models: &'a [LoadedModel],
    player_model: &'a [usize],
    folder: &'a ResultsFolder,
    infos: &'a Value,
    args: &'a GenArgs,
    delay: Option<Duration>,
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
        while !live.is_empty() {
            // Every live episode either ends here or has one pending turn.
            for ep in &mut live {
                match ep.master.next_turn() {
                    None => {
                        let outcome: Outcome = ep.master.outcome();
                        let scores = ep.recorder.complete(&outcome)?;
                        finished.push(self.result(ep, Status::Completed, scores.get("episode scores").cloned(), None));
                        ep.done = true;
                    }
                    Some(turn) if turn.player >= ep.players.len() => {
                        let msg =
                            format!("the game master asked for player {} of {}", turn.player + 1, ep.players.len());
                        ep.recorder.fail("GameError", &msg)?;
                        finished.push(self.result(ep, Status::Error, None, Some(msg)));
                        ep.done = true;
                    }
                    Some(turn) => {
                        let action = json!({"type": "send message", "content": turn.context, "label": "context"});
                        let to = ep.players[turn.player].clone();
                        ep.recorder.log_event("GM", &to, action);
                        ep.pending = Some((turn.player, turn.context));
                    }
                }
            }
            live.retain(|ep| !ep.done);
            // One request per model: that model's pending turns as one batch.
            let mut used: Vec<usize> =
                live.iter().filter_map(|ep| ep.pending.as_ref().map(|(p, _)| self.player_model[*p])).collect();
            used.sort_unstable();
            used.dedup();
            for m in used {
                let idx: Vec<usize> = (0..live.len())
                    .filter(|&i| live[i].pending.as_ref().is_some_and(|(p, _)| self.player_model[*p] == m))
                    .collect();
                let batch: Vec<Vec<Message>> = idx
                    .iter()
                    .map(|&i| {
                        let ep = &live[i];
                        let (p, ctx) = ep.pending.clone().unwrap_or_default();
                        let mut msgs = ep.histories[p].clone();
                        msgs.push(Message::user(ctx));
                        msgs
                    })
                    .collect();
                if let Some(d) = self.delay {
                    std::thread::sleep(d);
                }
                let model = &self.models[m];
                let mut out = if batch.len() == 1 {
                    vec![model.generate_response(&batch[0], self.args)]
                } else {
                    model.generate_batch_response(&batch, self.args)
                };
                out.resize_with(batch.len(), || {
                    Err(ModelError::backend(model.name(), "the backend returned fewer replies than requests"))
                });
                for (&i, result) in idx.iter().zip(out) {
                    let ep = &mut live[i];
                    let Some((p, context)) = ep.pending.take() else { continue };
                    match result {
                        Ok(generation) => {
                            let name = ep.players[p].clone();
                            ep.recorder.count_request();
                            ep.recorder.log_response(
                                p,
                                &name,
                                &generation.response_text,
                                generation.prompt,
                                generation.response,
                            );
                            ep.histories[p].push(Message::user(context));
                            ep.histories[p].push(Message::assistant(generation.response_text.clone()));
                            ep.master.on_response(p, &generation.response_text, &mut ep.recorder);
                            ep.recorder.flush()?;
                        }
                        Err(e) => {
                            ep.recorder.fail(model_error_type(&e), &e.to_string())?;
                            finished.push(self.result(ep, Status::Error, None, Some(e.to_string())));
                            ep.done = true;
                        }
                    }
                }
                live.retain(|ep| !ep.done);
            }
        }
        Ok(finished)
    }

    /// Prepares an instance: a clean folder, instance.json, experiment.json, the game master and recorder.
    /// The inner error is an instance that cannot be played (recorded in error.json).
    fn start<'e>(
        &self,
        exp: &'e Experiment,
        inst: &'e Instance,
    ) -> Result<Result<Episode<'e>, InstanceResult>, RunError> {
        let game = self.game.name();
        let dir = self.folder.instance_path(game, &exp.name, inst.game_id);
        recorder::clear_instance_dir(&dir)?;
        fsio::write_json(&dir.join("instance.json"), &Value::Object(inst.data.clone()))?;
        recorder::write_experiment_file(&self.folder.experiment_path(game, &exp.name), &exp.params, game, self.infos)?;
        let fail = |error: &str, message: String| -> Result<InstanceResult, RunError> {
            fsio::write_json(
                &dir.join("error.json"),
                &json!({"timestamp": now_iso(), "error": error, "message": message}),
            )?;
            Ok(InstanceResult {
                experiment: exp.name.clone(),
                game_id: inst.game_id,
                status: Status::Error,
                scores: None,
                error: Some(message),
            })
        };
        let master = match self.game.master(exp, inst) {
            Ok(m) => m,
            Err(e) => return Ok(Err(fail("GameError", e.message)?)),
        };
        let roles = master.roles();
        if roles.len() != self.player_model.len() {
            let msg =
                format!("the game master has {} players, the game declares {}", roles.len(), self.player_model.len());
            return Ok(Err(fail("GameError", msg)?));
        }
        let players: Vec<PlayerInfo> = roles
            .iter()
            .enumerate()
            .map(|(i, role)| PlayerInfo {
                name: format!("Player {}", i + 1),
                game_role: role.clone(),
                model_name: self.models[self.player_model[i]].name().to_string(),
            })
            .collect();
        let recorder =
            EpisodeRecorder::new(&dir, game, &exp.name, inst.game_id, &self.folder.run_dir, self.infos, &players);
        Ok(Ok(Episode {
            experiment: exp,
            instance: inst,
            master,
            recorder,
            histories: vec![Vec::new(); players.len()],
            players: players.into_iter().map(|p| p.name).collect(),
            pending: None,
            done: false,
        }))
    }

    fn result(&self, ep: &Episode<'_>, status: Status, scores: Option<Value>, error: Option<String>) -> InstanceResult {
        InstanceResult { experiment: ep.experiment.name.clone(), game_id: ep.instance.game_id, status, scores, error }
    }
}
