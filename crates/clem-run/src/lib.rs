//! clem-run: playing games with clemrs models and keeping clembench's records.
//!
//! Dependencies run one way: [`games`] -> [`dialogue`] -> [`game`] <- [`runner`] -> [`recorder`].
//!
//! - [`game`]: what a game is to the runner (players, turns, what a game master logs, its scorer);
//! - [`dialogue`]: clemcore's legacy `DialogueGameMaster`, which games implement hooks of;
//! - [`games`]: the games, one module each, and their `GAMES` table (clembench's hellogame);
//! - [`instances`]: instances files (`in/instances.json`);
//! - [`recorder`] and [`fsio`]: the clemcore 3.7 results layout, written crash-safely;
//! - [`runner`]: plays instances sequentially or in batches, resumes interrupted runs;
//! - [`scores`] and [`pyjson`]: scores.json as clemcore's legacy `GameScorer` writes it, NaN included;
//! - [`rescore`]: `clem score`, scores.json again from the records;
//! - [`eval`]: `clem eval`, clemcore's results table (clemscore);
//! - [`usage`]: each model's calls, tokens, time and cost, in run_summary.json and summed for `clem eval`;
//! - [`transcript`] and [`tex`]: HTML transcripts of recorded episodes, and clemcore's `transcript.tex`;
//! - [`check_hf`]: clembench's `initial_hf_check.py` on a model's tokenizer files.

pub mod check_hf;
pub mod dialogue;
pub mod eval;
pub mod fsio;
pub mod game;
pub mod games;
pub mod instances;
pub mod pyjson;
pub mod recorder;
pub mod rescore;
pub mod runner;
pub mod scores;
pub mod tex;
pub mod transcript;
pub mod usage;

/// clembench's hellogame (also at `games::hellogame`).
pub use games::hellogame;
