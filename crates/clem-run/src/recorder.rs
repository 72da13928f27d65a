//! The results layout of clemcore 3.7, file for file and key for key, written crash-safely.
//!
//! ```text
//! <results>/<run dir>/run.json                      clem_version, created, player_models, games{name: {...}}
//! <results>/<run dir>/run_summary.json              ours: the last invocation's outcome per instance
//! <results>/<run dir>/<game>/<experiment>/experiment.json
//! <results>/<run dir>/<game>/<experiment>/instance_00000/
//!     instance.json, interactions.json, player_N.requests.json, scores.json, completed.json | error.json
//! ```
//!
//! The recorder writes what it is given: events, keys, rounds and each call's prompt and response objects. It
//! never knows which game or backend produced them. Deviations from clemcore, on purpose: interactions.json
//! and the requests files are rewritten after every call (with `meta.completed` null until the episode ends),
//! so an interrupted run keeps every finished call; clemcore writes them once at the end and not at all for an
//! episode that raised. scores.json is written when an episode completes, as `clem score` would write it.

use std::path::{Path, PathBuf};

use clem_core::{GenArgs, ModelSpec};
use serde_json::{json, Map, Value};

use crate::fsio::{self, now_iso, FsError};

/// The value written as `clem_version`.
pub fn clem_version() -> String {
    format!("clemrs-{}", env!("CARGO_PKG_VERSION"))
}

/// clemcore's `Model.to_identifier`: model names joined by `--` for one or two models, else
/// `group-<n>p-<first 8 hex of sha1>`. Path separators in a name become `_` so a name stays one folder.
pub fn run_identifier(model_names: &[&str]) -> String {
    let names: Vec<String> = model_names.iter().map(|n| n.replace(['/', '\\'], "_")).collect();
    let joined = names.join("--");
    if names.len() <= 2 {
        return joined;
    }
    let hash = sha1_smol::Sha1::from(joined.as_bytes()).digest().to_string();
    format!("group-{}p-{}", names.len(), &hash[..8])
}

/// clemcore's `Model.to_infos`: `{"0": {"model_spec": {...}, "gen_args": {...}}, ...}`.
pub fn model_infos(models: &[(ModelSpec, GenArgs)]) -> Value {
    let mut out = Map::new();
    for (i, (spec, args)) in models.iter().enumerate() {
        let mut gen = Map::new();
        gen.insert("temperature".into(), json!(args.temperature));
        gen.insert("max_tokens".into(), json!(args.max_tokens));
        gen.extend(args.extra.clone());
        out.insert(i.to_string(), json!({ "model_spec": Value::Object(spec.as_map().clone()), "gen_args": gen }));
    }
    Value::Object(out)
}

/// Where the files of one run go.
#[derive(Clone, Debug)]
pub struct ResultsFolder {
    pub root: PathBuf,
    pub run_dir: String,
}

impl ResultsFolder {
    pub fn run_path(&self) -> PathBuf {
        self.root.join(&self.run_dir)
    }
    pub fn experiment_path(&self, game: &str, experiment: &str) -> PathBuf {
        self.run_path().join(game).join(experiment)
    }
    pub fn instance_path(&self, game: &str, experiment: &str, game_id: u64) -> PathBuf {
        self.experiment_path(game, experiment).join(instance_dir(game_id))
    }
}

/// `instance_00000`.
pub fn instance_dir(game_id: u64) -> String {
    format!("instance_{game_id:05}")
}

/// `Player 1` -> `player_1.requests.json`, as clemcore's PlayerFileSaver names it.
pub fn requests_file_name(player_name: &str) -> String {
    let parts: Vec<String> = player_name.trim().to_lowercase().split_whitespace().map(String::from).collect();
    format!("{}.requests.json", parts.join("_"))
}

/// run.json: created once (kept when it exists, as clemcore's RunFileSaver does), updated per game.
pub struct RunFile {
    path: PathBuf,
    data: Value,
    start: chrono::DateTime<chrono::Local>,
    game: String,
}

impl RunFile {
    /// Opens (or creates) run.json and records the game's `benchmark_start`.
    pub fn start(folder: &ResultsFolder, player_models: &Value, game: &str, game_path: &str) -> Result<Self, FsError> {
        let path = folder.run_path().join("run.json");
        let mut data = match fsio::read_json(&path) {
            Ok(v @ Value::Object(_)) => v,
            _ => json!({
                "clem_version": clem_version(),
                "created": now_iso(),
                "player_models": player_models,
                "games": {},
            }),
        };
        let start = chrono::Local::now();
        if !data.get("games").is_some_and(Value::is_object) {
            data["games"] = json!({});
        }
        data["games"][game] = json!({ "game_path": game_path, "benchmark_start": fsio::isoformat(&start) });
        fsio::write_json(&path, &data)?;
        Ok(RunFile { path, data, start, game: game.into() })
    }

    /// Records `benchmark_end`, `duration` (Python's `str(timedelta)`), `duration_seconds`, `num_instances`.
    pub fn finish(mut self, num_instances: usize) -> Result<(), FsError> {
        let end = chrono::Local::now();
        let took = (end - self.start).to_std().unwrap_or_default();
        let info = &mut self.data["games"][&self.game];
        info["benchmark_end"] = json!(fsio::isoformat(&end));
        info["duration"] = json!(clem_core::model::python_timedelta(took));
        info["duration_seconds"] = json!(took.as_secs_f64());
        info["num_instances"] = json!(num_instances);
        fsio::write_json(&self.path, &self.data)
    }
}

/// experiment.json, written once per experiment folder (the first instance to start writes it).
pub fn write_experiment_file(
    dir: &Path,
    params: &Map<String, Value>,
    game: &str,
    player_models: &Value,
) -> Result<(), FsError> {
    let path = dir.join("experiment.json");
    if path.is_file() {
        return Ok(());
    }
    let mut data = params.clone();
    data.insert("timestamp".into(), json!(now_iso()));
    data.insert("game_name".into(), json!(game));
    data.insert("player_models".into(), player_models.clone());
    fsio::write_json(&path, &Value::Object(data))
}

/// Removes what an earlier attempt left in an instance folder, so a redone instance starts clean.
pub fn clear_instance_dir(dir: &Path) -> Result<(), FsError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = matches!(
            name.as_str(),
            "instance.json"
                | "interactions.json"
                | "completed.json"
                | "error.json"
                | "scores.json"
                | "transcript.html"
                | "transcript.tex"
        ) || name.ends_with(".requests.json")
            || name.starts_with(fsio::TEMP_PREFIX);
        if ours && entry.path().is_file() {
            std::fs::remove_file(entry.path()).map_err(|source| FsError::Io { path: entry.path(), source })?;
        }
    }
    Ok(())
}

/// One player of an episode as the recorder knows it.
#[derive(Clone, Debug)]
pub struct PlayerInfo {
    pub name: String,
    pub game_role: String,
    pub model_name: String,
}

struct PlayerCalls {
    file_name: String,
    requests: Value,
}

/// Records one episode: `interactions.json` (GameInteractionsRecorder) and one `player_N.requests.json` per
/// player with calls (EventCallRecorder), flushed to disk after every call.
pub struct EpisodeRecorder {
    dir: PathBuf,
    interactions: Value,
    round: usize,
    players: Vec<PlayerCalls>,
}

impl EpisodeRecorder {
    pub fn new(
        dir: &Path,
        game: &str,
        experiment: &str,
        game_id: u64,
        run_dir: &str,
        player_models: &Value,
        players: &[PlayerInfo],
    ) -> Self {
        let mut players_obj = Map::new();
        players_obj.insert("GM".into(), json!({"game_role": "Game Master", "model_name": "programmatic"}));
        for p in players {
            players_obj.insert(p.name.clone(), json!({"game_role": p.game_role, "model_name": p.model_name}));
        }
        let interactions = json!({
            "meta": {
                "game_name": game,
                "experiment_name": experiment,
                "game_id": game_id,
                "results_folder": run_dir,
                "clem_version": clem_version(),
                "round_count": null,
                "completed": null,
            },
            "player_models": player_models,
            "players": players_obj,
            "turns": [[]],
        });
        let players = players
            .iter()
            .map(|p| PlayerCalls {
                file_name: requests_file_name(&p.name),
                requests: json!({
                    "meta": {
                        "game_name": game,
                        "experiment_name": experiment,
                        "game_id": game_id,
                        "player_name": p.name,
                        "game_role": p.game_role,
                        "model_name": p.model_name,
                        "round_count": null,
                        "completed": null,
                    },
                    "calls": [],
                }),
            })
            .collect();
        EpisodeRecorder { dir: dir.to_path_buf(), interactions, round: 0, players }
    }

    /// Appends `{from, to, timestamp, action}` to the current round.
    pub fn log_event(&mut self, from: &str, to: &str, action: Value) {
        let event = json!({"from": from, "to": to, "timestamp": now_iso(), "action": action});
        if let Some(Value::Array(round)) = self.interactions["turns"].get_mut(self.round) {
            round.push(event);
        }
    }

    /// A top-level key of interactions.json (clemcore's `log_key`).
    pub fn log_key(&mut self, key: &str, value: Value) {
        if let Value::Object(obj) = &mut self.interactions {
            obj.insert(key.into(), value);
        }
    }

    /// A player's call: `{round, call: {timestamp, manipulated_prompt_obj, raw_response_obj}}` in its file.
    pub fn log_call(&mut self, player: usize, prompt: Value, response: Value) {
        let round = self.round;
        if let Some(Value::Array(calls)) = self.players.get_mut(player).map(|p| &mut p.requests["calls"]) {
            calls.push(json!({
                "round": round,
                "call": {"timestamp": now_iso(), "manipulated_prompt_obj": prompt, "raw_response_obj": response},
            }));
        }
    }

    pub fn log_next_round(&mut self) {
        self.round += 1;
        self.interactions["meta"]["round_count"] = json!(self.round + 1);
        if let Value::Array(turns) = &mut self.interactions["turns"] {
            turns.push(json!([]));
        }
        for p in &mut self.players {
            p.requests["meta"]["round_count"] = json!(self.round + 1);
        }
    }

    /// The game ended properly: `round_count` and `completed: true` everywhere (clemcore's `log_game_end`).
    pub fn log_game_end(&mut self) {
        let rounds = json!(self.round + 1);
        self.interactions["meta"]["round_count"] = rounds.clone();
        self.interactions["meta"]["completed"] = json!(true);
        for p in &mut self.players {
            p.requests["meta"]["round_count"] = rounds.clone();
            p.requests["meta"]["completed"] = json!(true);
        }
    }

    /// interactions.json as recorded so far.
    pub fn interactions(&self) -> &Value {
        &self.interactions
    }

    /// Writes interactions.json and every player file that has calls.
    pub fn flush(&self) -> Result<(), FsError> {
        for p in &self.players {
            if p.requests["calls"].as_array().is_some_and(|c| !c.is_empty()) {
                fsio::write_json(&self.dir.join(&p.file_name), &p.requests)?;
            }
        }
        fsio::write_json(&self.dir.join("interactions.json"), &self.interactions)
    }

    /// Ends the episode properly: the final records, scores.json when there are scores, then completed.json
    /// last (so completed.json means every other file is final).
    pub fn complete(&mut self, scores: Option<&Value>) -> Result<(), FsError> {
        self.log_game_end();
        self.flush()?;
        if let Some(scores) = scores {
            crate::scores::write(&self.dir.join("scores.json"), scores)?;
        }
        fsio::write_json(&self.dir.join("completed.json"), &json!({"timestamp": now_iso()}))
    }

    /// Ends the episode with an error: what was recorded so far, then error.json
    /// (`{timestamp, error, message}` as clemcore's SignalFileSaver).
    pub fn fail(&self, error_type: &str, message: &str) -> Result<(), FsError> {
        self.flush()?;
        write_error(&self.dir, error_type, message)
    }
}

/// error.json: `{timestamp, error, message}`.
pub fn write_error(dir: &Path, error_type: &str, message: &str) -> Result<(), FsError> {
    fsio::write_json(&dir.join("error.json"), &json!({"timestamp": now_iso(), "error": error_type, "message": message}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_names() {
        assert_eq!(run_identifier(&["mock"]), "mock");
        assert_eq!(run_identifier(&["a", "b"]), "a--b");
        assert_eq!(run_identifier(&["org/m"]), "org_m");
        // Python: hashlib.sha1("a--b--c".encode()).hexdigest()[:8]
        assert_eq!(run_identifier(&["a", "b", "c"]), "group-3p-c1d9fae9");
        assert_eq!(requests_file_name("Player 1"), "player_1.requests.json");
        assert_eq!(instance_dir(7), "instance_00007");
    }
}
