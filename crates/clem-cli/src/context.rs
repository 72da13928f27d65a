//! What every subcommand shares: the registry sources and key file given on the command line, loaded on demand.

use std::path::PathBuf;
use std::sync::Once;

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

    /// The registries, kept for the life of the process; says once when ./model_registry.json shadows entries.
    pub fn registry(&self) -> anyhow::Result<&'static Registry> {
        let registry = keep(Registry::load(&self.sources)?);
        static SHADOWS: Once = Once::new();
        SHADOWS.call_once(|| warn(registry.shadow_warning()));
        Ok(registry)
    }

    /// The keys; says once when the key file is open to other users.
    pub fn keys(&self) -> anyhow::Result<Keys> {
        let keys = Keys::discover(self.keys_file.as_deref()).context("loading keys")?;
        static LOOSE: Once = Once::new();
        LOOSE.call_once(|| warn(keys.permission_warning()));
        Ok(keys)
    }
}

/// A warning on stderr, as every command prints them.
fn warn(message: Option<String>) {
    if let Some(m) = message {
        eprintln!("clem: warning: {m}");
    }
}

/// Keeps a value until the process exits. `clem` is a one-shot command: freeing a 10,000-entry registry
/// entry by entry just before exiting costs more than checking it, so big loaded data is never dropped.
pub fn keep<T>(value: T) -> &'static T {
    Box::leak(Box::new(value))
}
