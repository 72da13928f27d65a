//! What every subcommand shares: the registry sources and key file given on the command line, loaded on demand.

use std::path::PathBuf;

use anyhow::Context as _;
use clem_core::keys::Keys;
use clem_core::registry::{Registry, Sources};

/// Global options, with loaders so a command reads only what it needs (cold start matters).
pub struct Ctx {
    pub sources: Sources,
    pub keys_file: Option<PathBuf>,
}

impl Ctx {
    pub fn new(files: Vec<PathBuf>, no_defaults: bool, keys_file: Option<PathBuf>) -> Ctx {
        Ctx { sources: Sources { files, no_defaults }, keys_file }
    }

    pub fn registry(&self) -> anyhow::Result<Registry> {
        Ok(Registry::load(&self.sources)?)
    }

    pub fn keys(&self) -> anyhow::Result<Keys> {
        Keys::discover(self.keys_file.as_deref()).context("loading keys")
    }
}
