//! What every subcommand shares: the registry sources and key file given on the command line, loaded on demand.

use std::path::PathBuf;

use anyhow::Context as _;
use clem_core::keys::Keys;
use clem_core::registry::{Registry, Sources};

/// Global options, with loaders so a command reads only what it needs (cold start matters).
pub struct Ctx {
    pub sources: Sources,
    pub keys_file: Option<PathBuf>,
    /// `--threads`: threads for local inference (else each backend's default).
    pub threads: Option<usize>,
}

impl Ctx {
    pub fn new(files: Vec<PathBuf>, no_defaults: bool, keys_file: Option<PathBuf>, threads: Option<usize>) -> Ctx {
        Ctx { sources: Sources { files, no_defaults }, keys_file, threads }
    }

    /// What loaders get: the keys and the thread count.
    pub fn load_context(&self) -> anyhow::Result<clem_backends::LoadContext> {
        Ok(clem_backends::LoadContext { keys: self.keys()?, threads: self.threads, ..Default::default() })
    }

    /// The registries, loaded once and kept for the life of the process.
    pub fn registry(&self) -> anyhow::Result<&'static Registry> {
        Ok(keep(Registry::load(&self.sources)?))
    }

    pub fn keys(&self) -> anyhow::Result<Keys> {
        Keys::discover(self.keys_file.as_deref()).context("loading keys")
    }
}

/// Keeps a value until the process exits. `clem` is a one-shot command: freeing a 10,000-entry registry
/// entry by entry just before exiting costs more than checking it, so big loaded data is never dropped.
pub fn keep<T>(value: T) -> &'static T {
    Box::leak(Box::new(value))
}
