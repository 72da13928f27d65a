//! scores.json as clemcore's legacy `GameScorer` (`clemgame/legacy/scorer.py`) writes it: `meta` and `players`
//! copied from interactions.json, `turn scores` per round, `episode scores`, then `player_models`.
//!
//! clembench's convention: an aborted episode's episode-level scores are NaN, except the framework's counts and
//! flags (Aborted, Lose, Success, the request counts and their ratio). NaN is written as Python writes it
//! (`NaN`, see [`crate::pyjson`]), so clemcore's `clem eval` and Python's `json` read it back as NaN.

use std::path::Path;

use serde_json::{Map, Value};

use crate::fsio::{self, FsError};
use crate::pyjson;

/// The framework's episode-level metrics (`clemgame/metrics.py`).
pub const ABORTED: &str = "Aborted";
pub const LOSE: &str = "Lose";
pub const SUCCESS: &str = "Success";
pub const REQUEST_COUNT: &str = "Request Count";
pub const REQUEST_COUNT_PARSED: &str = "Parsed Request Count";
pub const REQUEST_COUNT_VIOLATED: &str = "Violated Request Count";
pub const REQUEST_SUCCESS_RATIO: &str = "Request Success Ratio";
/// The game's main score, 0 to 100; NaN for an aborted episode.
pub const BENCH_SCORE: &str = "Main Score";
/// Computed by `clem eval` from Aborted; a game must not log it.
pub const PLAYED: &str = "Played";

/// One episode's scores being computed, in the order clemcore's scorer builds them.
#[derive(Clone, Debug)]
pub struct GameScorer {
    meta: Value,
    players: Value,
    turns: Map<String, Value>,
    episode: Map<String, Value>,
    player_models: Option<Value>,
}

impl GameScorer {
    /// `GameScorer.compute_scores`' first step: meta, players and player_models taken from interactions.json.
    pub fn new(interactions: &Value) -> Self {
        GameScorer {
            meta: interactions.get("meta").cloned().unwrap_or_else(|| Value::Object(Map::new())),
            players: interactions.get("players").cloned().unwrap_or_else(|| Value::Object(Map::new())),
            turns: Map::new(),
            episode: Map::new(),
            player_models: interactions.get("player_models").cloned(),
        }
    }

    /// `log_turn_score`: a round's score (use [`pyjson::float`] for values that may be NaN).
    pub fn log_turn_score(&mut self, round: usize, name: &str, value: Value) {
        if let Value::Object(m) = self.turns.entry(round.to_string()).or_insert_with(|| Value::Object(Map::new())) {
            m.insert(name.into(), value);
        }
    }

    /// `log_episode_score`: an episode-level score.
    pub fn log_episode_score(&mut self, name: &str, value: Value) {
        self.episode.insert(name.into(), value);
    }

    /// `score_game_end`: Aborted, Lose, Success (both 0 when aborted).
    pub fn score_game_end(&mut self, aborted: bool, lose: bool) {
        let lose = !aborted && lose;
        let success = !aborted && !lose;
        self.log_episode_score(ABORTED, Value::from(u8::from(aborted)));
        self.log_episode_score(LOSE, Value::from(u8::from(lose)));
        self.log_episode_score(SUCCESS, Value::from(u8::from(success)));
    }

    /// `score_requests`: the request counts and Parsed / Request (Python's true division, a float). None when
    /// there were no requests, where Python's division raises.
    pub fn score_requests(&mut self, requests: u64, parsed: i64, violated: u64) -> Option<()> {
        if requests == 0 {
            return None;
        }
        self.log_episode_score(REQUEST_COUNT, Value::from(requests));
        self.log_episode_score(REQUEST_COUNT_PARSED, Value::from(parsed));
        self.log_episode_score(REQUEST_COUNT_VIOLATED, Value::from(violated));
        self.log_episode_score(REQUEST_SUCCESS_RATIO, pyjson::float(parsed as f64 / requests as f64));
        Some(())
    }

    /// The scores.json document.
    pub fn into_value(self) -> Value {
        let mut out = Map::new();
        out.insert("meta".into(), self.meta);
        out.insert("players".into(), self.players);
        out.insert("turn scores".into(), Value::Object(self.turns));
        out.insert("episode scores".into(), Value::Object(self.episode));
        if let Some(p) = self.player_models {
            out.insert("player_models".into(), p);
        }
        Value::Object(out)
    }
}

/// Writes a JSON document that may hold NaN (scores.json, run_summary.json) as Python writes it, crash-safely.
pub fn write(path: &Path, scores: &Value) -> Result<(), FsError> {
    let mut text = pyjson::to_string_pretty(scores);
    text.push('\n');
    fsio::write_atomic(path, text.as_bytes())
}

/// Reads a JSON file that may hold Python's NaN (scores.json, run_summary.json).
pub fn read(path: &Path) -> Result<Value, FsError> {
    let text = std::fs::read_to_string(path).map_err(|source| FsError::Io { path: path.to_path_buf(), source })?;
    pyjson::from_str(&text).map_err(|e| FsError::Json { path: path.to_path_buf(), message: e.to_string() })
}

/// The `episode scores` of a scores.json file.
pub fn read_episode_scores(path: &Path) -> Result<Map<String, Value>, FsError> {
    let v = read(path)?;
    pyjson::object(&v, "episode scores")
        .cloned()
        .ok_or_else(|| FsError::Json { path: path.to_path_buf(), message: "no \"episode scores\" object".into() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn aborted_episodes_score_as_clemcore() {
        let interactions = json!({"meta": {"game_id": 0}, "player_models": {"0": {}}, "players": {"GM": {}},
                                  "turns": [[]]});
        let mut s = GameScorer::new(&interactions);
        s.log_turn_score(0, REQUEST_COUNT, json!(1));
        s.score_game_end(true, true);
        s.score_requests(1, 0, 1).expect("one request");
        s.log_episode_score(BENCH_SCORE, pyjson::float(f64::NAN));
        let v = s.into_value();
        let keys: Vec<&str> = v.as_object().expect("object").keys().map(String::as_str).collect();
        assert_eq!(keys, ["meta", "players", "turn scores", "episode scores", "player_models"]);
        let ep = &v["episode scores"];
        assert_eq!((&ep[ABORTED], &ep[LOSE], &ep[SUCCESS]), (&json!(1), &json!(0), &json!(0)));
        assert_eq!(ep[REQUEST_SUCCESS_RATIO], json!(0.0));
        assert!(pyjson::to_string_pretty(&v).contains("\"Main Score\": NaN"));
        assert!(GameScorer::new(&interactions).score_requests(0, 0, 0).is_none());

        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("scores.json");
        write(&p, &v).expect("writes");
        let back = read_episode_scores(&p).expect("reads");
        assert!(pyjson::as_f64(&back[BENCH_SCORE]).is_some_and(f64::is_nan));
        std::fs::write(&p, "{}").expect("write");
        assert!(read_episode_scores(&p).expect_err("no scores").to_string().contains("scores.json"));
    }
}
