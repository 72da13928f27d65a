//! clem-run: playing games with clemrs models and keeping clembench's records.
//!
//! - [`game`] and [`hellogame`]: the game interface and clembench's hellogame;
//! - [`instances`]: instances files (`in/instances.json`);
//! - [`recorder`] and [`fsio`]: the clemcore 3.7 results layout, written crash-safely;
//! - [`runner`]: plays instances sequentially or in batches, resumes interrupted runs;
//! - [`transcript`]: self-contained HTML transcripts of recorded episodes;
//! - [`check_hf`]: clembench's `initial_hf_check.py` on a model's tokenizer files.

pub mod check_hf;
pub mod fsio;
pub mod game;
pub mod hellogame;
pub mod instances;
pub mod recorder;
pub mod runner;
pub mod transcript;
