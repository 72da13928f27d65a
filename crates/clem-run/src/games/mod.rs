//! The games clemrs plays, one module each, registered in [`GAMES`]: adding a game is a module here exporting
//! a [`Game`] value and one line in the table.

pub mod hellogame;

use crate::game::Game;

/// The registration table: one line per game.
pub static GAMES: &[&dyn Game] = &[&hellogame::HelloGame];

/// The game with this name.
pub fn find_game(name: &str) -> Option<&'static dyn Game> {
    GAMES.iter().copied().find(|g| g.name() == name)
}

/// Every game's name, the nearest to `name` first (by edit distance, then alphabetically).
pub fn names_nearest(name: &str) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = GAMES.iter().map(|g| g.name()).collect();
    names.sort_by_key(|n| (strsim::levenshtein(name, n), *n));
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn games_are_found_by_name() {
        assert_eq!(find_game("hellogame").map(|g| g.name()), Some("hellogame"));
        assert!(find_game("guesswhat").is_none());
        assert_eq!(names_nearest("hellogam"), ["hellogame"]);
        for g in GAMES {
            assert!(crate::instances::parse(g.default_instances(), g.name()).is_ok(), "{}", g.name());
        }
    }
}
