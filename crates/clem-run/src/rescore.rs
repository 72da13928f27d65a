//! `clem score`: every episode under a results folder scored again from its records (interactions.json,
//! instance.json, the experiment's experiment.json) by its game's scorer, as clemcore's `clem score` does, so a
//! folder written before a scorer changed can be rescored.
//!
//! An episode belongs to the game whose name is one of its path's folders (clemcore's rule). Episodes that did
//! not complete (error.json, or `meta.completed` not true) are left alone; clemcore never wrote their records.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::fsio::FsError;
use crate::game::Game;
use crate::games::GAMES;
use crate::scores;

/// Which episodes to score.
#[derive(Clone, Debug, Default)]
pub struct ScoreOptions {
    /// Only this game (`-g`); `None`: every game clemrs has.
    pub game: Option<String>,
    /// Only episodes with a folder whose name contains this (`-m`, clemcore's model filter).
    pub model: Option<String>,
}

/// What `rescore` did.
#[derive(Clone, Debug, Default)]
pub struct ScoreReport {
    /// Instance folders whose scores.json was written.
    pub scored: Vec<PathBuf>,
    /// Instance folders left alone, with the reason (not completed).
    pub skipped: Vec<(PathBuf, String)>,
    /// Instance folders that could not be scored, with the reason.
    pub failed: Vec<(PathBuf, String)>,
    /// Episodes of games clemrs does not have, counted by game folder name.
    pub other_games: BTreeMap<String, usize>,
}

pub use crate::fsio::episode_dirs;

fn folder_names(p: &Path) -> Vec<String> {
    p.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect()
}

/// Scores every completed episode under `root` of the selected games.
pub fn rescore(root: &Path, opts: &ScoreOptions) -> ScoreReport {
    let games: Vec<&dyn Game> =
        GAMES.iter().copied().filter(|g| opts.game.as_deref().is_none_or(|name| g.name() == name)).collect();
    let mut report = ScoreReport::default();
    for dir in episode_dirs(root) {
        let parts = folder_names(&dir);
        if opts.model.as_deref().is_some_and(|m| !parts.iter().any(|p| p.contains(m))) {
            continue;
        }
        let Some(game) = games.iter().find(|g| parts.iter().any(|p| p == g.name())) else {
            if opts.game.is_none() {
                let name = dir.parent().and_then(Path::parent).and_then(Path::file_name);
                let name = name.map_or_else(|| "?".into(), |n| n.to_string_lossy().into_owned());
                *report.other_games.entry(name).or_default() += 1;
            }
            continue;
        };
        match score_episode(*game, &dir) {
            Ok(true) => report.scored.push(dir),
            Ok(false) => report.skipped.push((dir, "the episode did not complete".into())),
            Err(e) => report.failed.push((dir, e)),
        }
    }
    report
}

/// Scores one episode folder: `Ok(false)` when it did not complete.
pub fn score_episode(game: &dyn Game, dir: &Path) -> Result<bool, String> {
    let interactions = scores::read(&dir.join("interactions.json")).map_err(|e| e.to_string())?;
    let completed = interactions.get("meta").and_then(|m| m.get("completed"));
    if dir.join("error.json").exists() || completed.is_some_and(|c| c != &Value::Bool(true)) {
        return Ok(false);
    }
    let instance = scores::read(&dir.join("instance.json")).map_err(|e| e.to_string())?;
    let experiment_path = dir.parent().unwrap_or(dir).join("experiment.json");
    let experiment: Map<String, Value> = match scores::read(&experiment_path).map_err(|e| e.to_string())? {
        Value::Object(m) => m,
        _ => return Err(format!("{}: not a JSON object", experiment_path.display())),
    };
    let scores = game
        .score(&experiment, &instance, &interactions)
        .map_err(|e| format!("{}: {e}", dir.join("interactions.json").display()))?;
    scores::write(&dir.join("scores.json"), &scores).map_err(|e: FsError| e.to_string())?;
    Ok(true)
}
