//! What a game is to the runner: a [`Game`] (name, description, instances, scorer) makes one [`GameMaster`]
//! per instance, a turn-based state machine the runner drives so that several episodes can share a batch of
//! requests. A master reports what it logs as [`Log`] entries (clemcore's `GameEventSource` calls), which the
//! runner hands to the recorder: games know neither the recorder nor the backends.
//!
//! Games live in [`crate::games`], one module each, registered in its `GAMES` table; most are written against
//! [`crate::dialogue`], clemcore's legacy `DialogueGameMaster`.

use serde_json::{json, Map, Value};

use crate::instances::{Experiment, Instance};

/// A game instance that cannot be played or scored; the episode ends in `error.json`.
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

/// Who answers for a player.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plays {
    /// The n-th model player of the game (0-based): the n-th model of `-m`, or the only one for all.
    Model(usize),
    /// The game's own scripted answers (clemcore's `CustomResponseModel`, recorded as `programmatic`).
    Programmatic,
}

/// One player of an episode, in the order the game added it (`Player 1`, `Player 2`, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlayerSpec {
    /// The game role recorded for it (clemcore: the Player's class name).
    pub role: String,
    pub plays: Plays,
}

/// The next request of an episode: which player (0-based) answers which context.
#[derive(Clone, Debug, PartialEq)]
pub struct Turn {
    pub player: usize,
    pub context: String,
}

/// One thing a game master logged, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum LogEntry {
    /// `log_event(from_, to, action)`: a message between players and the game master.
    Event { from: String, to: String, action: Value },
    /// `log_key(key, value)`: a top-level key of interactions.json.
    Key { key: String, value: Value },
    /// `log_next_round()`.
    NextRound,
    /// `log_game_end()`: the episode ended properly.
    GameEnd,
}

/// What a game master logged since the runner last looked.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Log {
    entries: Vec<LogEntry>,
}

impl Log {
    pub fn log_event(&mut self, from: &str, to: &str, action: Value) {
        self.entries.push(LogEntry::Event { from: from.into(), to: to.into(), action });
    }

    /// A GM-to-GM action `{type, content}` (no label), as clemcore's `log_to_self`.
    pub fn log_to_self(&mut self, type_: &str, content: Value) {
        self.log_event("GM", "GM", json!({"type": type_, "content": content}));
    }

    pub fn log_key(&mut self, key: &str, value: Value) {
        self.entries.push(LogEntry::Key { key: key.into(), value });
    }

    pub fn log_next_round(&mut self) {
        self.entries.push(LogEntry::NextRound);
    }

    pub fn log_game_end(&mut self) {
        self.entries.push(LogEntry::GameEnd);
    }

    /// Moves every entry of `other` to the end of this log.
    pub fn append(&mut self, other: &mut Log) {
        self.entries.append(&mut other.entries);
    }

    /// Takes every entry, oldest first.
    pub fn drain(&mut self) -> Vec<LogEntry> {
        std::mem::take(&mut self.entries)
    }
}

/// One episode's rules. The runner asks for the next turn, gets the player's reply (from its model or from
/// [`GameMaster::custom_response`]), records the call, and hands the reply to [`GameMaster::step`].
pub trait GameMaster: Send {
    /// Every player, in player order.
    fn players(&self) -> &[PlayerSpec];
    /// The pending turn, or `None` once the game is over.
    fn next_turn(&self) -> Result<Option<Turn>, GameError>;
    /// A scripted player's reply (clemcore's `Player._custom_response`), also the reply of the `mock` model.
    fn custom_response(&self, player: usize, context: &str) -> String;
    /// Applies the current player's reply to the pending turn, logging what the game logs.
    fn step(&mut self, response: &str, log: &mut Log) -> Result<(), GameError>;
}

/// A game the runner can play and score.
pub trait Game: Send + Sync {
    fn name(&self) -> &'static str;
    /// One line, as clembench's `clemgame.json` `description`.
    fn description(&self) -> &'static str;
    /// How many model players an episode has (`clemgame.json` `players`).
    fn players(&self) -> usize;
    /// The instances played by default: the text of the game's `in/instances.json`.
    fn default_instances(&self) -> &'static str;
    /// A game master set up for one instance and started (clemcore's `setup` and `before_game`).
    fn master(
        &self,
        experiment: &Experiment,
        instance: &Instance,
        log: &mut Log,
    ) -> Result<Box<dyn GameMaster>, GameError>;
    /// scores.json of a finished episode, from its records (clemcore's `GameScorer.compute_scores`):
    /// `experiment` is experiment.json, `instance` instance.json, `interactions` interactions.json.
    fn score(
        &self,
        experiment: &Map<String, Value>,
        instance: &Value,
        interactions: &Value,
    ) -> Result<Value, GameError>;
}
