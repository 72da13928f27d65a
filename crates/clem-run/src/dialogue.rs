//! clemcore's legacy `DialogueGameMaster` (`clemgame/legacy/master.py`) as a [`GameMaster`]: players take
//! turns in the order they were added, each answering the context the game last set for it; a round ends when
//! the turn comes back to the first player. A game implements the [`DialogueGame`] hooks, named as in
//! clemcore, and reaches the master's state through [`Gm`].

use serde_json::{json, Value};

use crate::game::{GameError, GameMaster, Log, PlayerSpec, Plays, Turn};

/// The game master's state as a game's hooks see it (clemcore's `self.` inside a `DialogueGameMaster`).
#[derive(Debug, Default)]
pub struct Gm {
    players: Vec<PlayerSpec>,
    contexts: Vec<Option<String>>,
    current_player: usize,
    current_round: i64,
    log: Log,
}

impl Gm {
    /// `add_player`: the next player (`Player N`); returns its index.
    pub fn add_player(&mut self, role: &str, plays: Plays) -> usize {
        self.players.push(PlayerSpec { role: role.into(), plays });
        self.contexts.push(None);
        self.players.len() - 1
    }

    /// `set_context_for`: what `player` answers on its next turn.
    pub fn set_context_for(&mut self, player: usize, content: &str) {
        if let Some(c) = self.contexts.get_mut(player) {
            *c = Some(content.to_string());
        }
    }

    pub fn log_to_self(&mut self, type_: &str, content: Value) {
        self.log.log_to_self(type_, content);
    }

    pub fn log_key(&mut self, key: &str, value: Value) {
        self.log.log_key(key, value);
    }

    /// The round being played (0 once the game has begun).
    pub fn current_round(&self) -> i64 {
        self.current_round
    }

    pub fn current_player(&self) -> usize {
        self.current_player
    }

    pub fn player_count(&self) -> usize {
        self.players.len()
    }

    /// `Player N` for a player index.
    pub fn player_name(player: usize) -> String {
        format!("Player {}", player + 1)
    }
}

/// A game's rules as hooks of the dialogue game master; defaults are clemcore's.
pub trait DialogueGame: Send {
    /// `_on_before_game`: typically sets the first player's context.
    fn on_before_game(&mut self, _gm: &mut Gm) {}
    /// `_does_game_proceed`: asked after every turn (and may log the outcome when it says no).
    fn does_game_proceed(&mut self, gm: &mut Gm) -> bool;
    /// `_validate_player_response`: false skips parsing and `on_valid_player_response`.
    fn validate_player_response(&mut self, gm: &mut Gm, player: usize, response: &str) -> bool;
    /// `_parse_response`.
    fn parse_response(&mut self, _gm: &mut Gm, _player: usize, response: &str) -> String {
        response.to_string()
    }
    /// `_on_valid_player_response`: typically sets the next player's context.
    fn on_valid_player_response(&mut self, gm: &mut Gm, player: usize, parsed: &str);
    /// `_should_pass_turn`.
    fn should_pass_turn(&mut self, _gm: &Gm) -> bool {
        true
    }
    /// `_on_before_round`.
    fn on_before_round(&mut self, _gm: &mut Gm) {}
    /// `_on_after_round`.
    fn on_after_round(&mut self, _gm: &mut Gm) {}
    /// `_on_after_game`.
    fn on_after_game(&mut self, _gm: &mut Gm) {}
    /// `Player._custom_response` of the player at this index.
    fn custom_response(&self, player: usize, context: &str) -> String;
}

/// A dialogue game being played.
pub struct Dialogue<G> {
    game: G,
    gm: Gm,
    done: bool,
}

impl<G: DialogueGame + 'static> Dialogue<G> {
    /// `setup` (the game's `_on_setup`: adds the players, returns the game state) then `before_game`.
    pub fn start(
        setup: impl FnOnce(&mut Gm) -> Result<G, GameError>,
        log: &mut Log,
    ) -> Result<Box<dyn GameMaster>, GameError> {
        let mut gm = Gm { current_round: -1, ..Gm::default() };
        let mut game = setup(&mut gm)?;
        if gm.players.is_empty() {
            return Err(GameError::new("the game added no players"));
        }
        game.on_before_game(&mut gm);
        gm.current_round += 1;
        game.on_before_round(&mut gm);
        log.append(&mut gm.log);
        Ok(Box::new(Dialogue { game, gm, done: false }))
    }
}

impl<G: DialogueGame> GameMaster for Dialogue<G> {
    fn players(&self) -> &[PlayerSpec] {
        &self.gm.players
    }

    fn next_turn(&self) -> Result<Option<Turn>, GameError> {
        if self.done {
            return Ok(None);
        }
        let player = self.gm.current_player;
        match self.gm.contexts.get(player).cloned().flatten() {
            Some(context) => Ok(Some(Turn { player, context })),
            None => Err(GameError::new(format!("{} has its turn but no context to answer", Gm::player_name(player)))),
        }
    }

    fn custom_response(&self, player: usize, context: &str) -> String {
        self.game.custom_response(player, context)
    }

    /// clemcore's legacy `DialogueGameMaster.step`, line for line.
    fn step(&mut self, response: &str, log: &mut Log) -> Result<(), GameError> {
        let Some(Turn { player, context }) = self.next_turn()? else {
            return Err(GameError::new("the game is over"));
        };
        let (gm, game) = (&mut self.gm, &mut self.game);
        let name = Gm::player_name(player);
        gm.log.log_event("GM", &name, json!({"type": "send message", "content": context, "label": "context"}));
        gm.log.log_event(&name, "GM", json!({"type": "get message", "content": response, "label": "response"}));
        if game.validate_player_response(gm, player, response) {
            let parsed = game.parse_response(gm, player, response);
            game.on_valid_player_response(gm, player, &parsed);
        }
        if game.should_pass_turn(gm) {
            gm.current_player = (gm.current_player + 1) % gm.players.len();
        }
        if gm.current_player == 0 {
            game.on_after_round(gm);
            gm.current_round += 1;
        }
        if !game.does_game_proceed(gm) {
            game.on_after_game(gm);
            gm.log.log_game_end();
            self.done = true;
        } else if gm.current_player == 0 {
            gm.log.log_next_round();
            game.on_before_round(gm);
        }
        log.append(&mut self.gm.log);
        Ok(())
    }
}
