//! One module per `clem` subcommand.

pub mod check_hf;
pub mod eval;
pub mod generate;
pub mod list;
pub mod register;
pub mod registry;
pub mod registry_import;
pub mod resolve;
pub mod run;
pub mod score;
pub mod serve;
pub mod template;
pub mod transcribe;
