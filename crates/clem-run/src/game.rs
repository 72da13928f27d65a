//! What a game is to the runner: a [`Game`] (name, players, instances, a responder for scripted players) that
//! makes one [`GameMaster`] per instance. A game master is a turn-based state machine in clemcore's
//! `DialogueGameMaster` style; the runner drives it so that several episodes can share one batch of requests.

use clem_backends::Responder;
use serde_json::Value;

use crate::instances::{Experiment, Instance};
use crate::recorder::EpisodeRecorder;

/// A game instance that cannot be played (bad instance data); the episode ends in `error.json`.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct GameError {
    pub message: String,
}

impl GameError {
    pub fn new(message: impl Into<String>) -> Self {
        GameError { message: message.into() }
    }
}

/// The next request of an episode: which player speaks (0-based) and the context it answers.
#[derive(Clone, Debug, PartialEq)]
pub struct Turn {
    pub player: usize,
    pub context: String,
}

/// How an episode ended, for scores.json and the summary.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub aborted: bool,
    pub success: bool,
    /// clembench's `Main Score`, 0 to 100.
    pub main_score: f64,
    /// The game's own episode score (`compute_episode_score`).
    pub episode_score: Value,
}

/// One episode's rules. The runner asks for the next turn, sends it to the player's model (recording the
/// call), and hands the reply back; the master logs its own judgements through the recorder.
pub trait GameMaster: Send {
    /// The game role of each player, in player order (`Player 1`, `Player 2`, ...).
    fn roles(&self) -> Vec<String>;
    /// The next turn, or `None` when the game is over.
    fn next_turn(&mut self) -> Option<Turn>;
    /// Applies a player's reply: parse, judge, log (`log_to_self`, request violations, next round).
    fn on_response(&mut self, player: usize, response: &str, recorder: &mut EpisodeRecorder);
    /// The result, once `next_turn` returned `None`.
    fn outcome(&self) -> Outcome;
}

/// A game the runner can play.
pub trait Game: Send + Sync {
    fn name(&self) -> &str;
    /// How many players an episode has.
    fn players(&self) -> usize;
    /// Where the game lives, recorded as `game_path` in run.json.
    fn game_path(&self) -> String;
    /// The default instances file (text of `in/instances.json`).
    fn default_instances(&self) -> &str;
    /// Replies for scripted (`mock`) players, as clemcore's `Player._custom_response`.
    fn responder(&self) -> Responder;
    /// A fresh game master for one instance.
    fn master(&self, experiment: &Experiment, instance: &Instance) -> Result<Box<dyn GameMaster>, GameError>;
}

/// Games built into clemrs, by name.
pub fn find_game(name: &str) -> Option<Box<dyn Game>> {
    match name {
        "hellogame" => Some(Box::new(crate::hellogame::HelloGame)),
        _ => None,
    }
}

/// Names of the built-in games.
pub const GAMES: &[&str] = &["hellogame"];
