//! `clem register key|model`: create or update `./key.json` (mode 0600; `--keys FILE` instead) and
//! `./model_registry.json` (the first `--registry FILE` instead).
//!
//! `--set KEY=VALUE` values are read as JSON when they parse (`true`, `3`, `{"a": 1}`), else as strings;
//! dotted keys (`model_config.eos_to_cull=...`) write into nested objects. A model entry is checked with the
//! loader's own check before anything is written (errors refuse it, warnings are printed); a key section must be
//! one some backend reads (or already in the file). Files are rewritten atomically, through a temporary file
//! created exclusively under a random name; a symlinked file is written through: its target is replaced, the
//! link stays.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;
use clem_core::keys::mask;
use clem_core::registry::LOCAL_REGISTRY;
use serde_json::{Map, Value};

use crate::context::Ctx;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Set values of a key.json section (e.g. `clem register key openai --set api_key=sk-...`).
    Key {
        /// The key.json section, as backends read it: openai, anthropic, huggingface, openai_compatible, ...
        section: String,
        /// A value to set in the section, e.g. `api_key=sk-...` or `base_url=http://localhost:8000/v1`
        /// (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE", required = true)]
        set: Vec<String>,
    },
    /// Add or update a model entry in ./model_registry.json (or the first --registry FILE).
    Model {
        /// The entry's model_name: what `-m NAME` selects.
        name: String,
        /// The backend that runs the model (`clem list backends` lists them).
        #[arg(long)]
        backend: String,
        /// A value of the entry, e.g. `model_id=gpt-4o` or `model_config.premade_chat_template=true`; values
        /// are read as JSON when they parse, dotted keys nest (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
}

pub fn run(args: Args, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    match args.what {
        What::Key { section, set } => register_key(&section, &set, ctx),
        What::Model { name, backend, set } => register_model(&name, &backend, &set, ctx),
    }
}

fn parse_assignment(s: &str) -> anyhow::Result<(Vec<String>, Value)> {
    let Some((key, raw)) = s.split_once('=') else { bail!("--set {s:?}: expected KEY=VALUE") };
    if key.is_empty() || key.split('.').any(str::is_empty) {
        bail!("--set {s:?}: empty key");
    }
    let value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.into()));
    Ok((key.split('.').map(String::from).collect(), value))
}

fn set_path(obj: &mut Map<String, Value>, path: &[String], value: Value) -> anyhow::Result<()> {
    let (last, parents) = path.split_last().context("empty key")?;
    let mut cur = obj;
    for p in parents {
        let slot = cur.entry(p.clone()).or_insert_with(|| Value::Object(Map::new()));
        cur = match slot {
            Value::Object(m) => m,
            _ => bail!("{} is not an object", p),
        };
    }
    cur.insert(last.clone(), value);
    Ok(())
}

fn read_json_or(path: &Path, default: Value) -> anyhow::Result<Value> {
    if !path.exists() {
        return Ok(default);
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))
}

/// Writes through a temporary file and a rename, so a crash never leaves half a file. The temporary file is
/// created exclusively under a random name in the target's folder (another local user cannot have placed a
/// file or link there first), with mode 0600 from the start when `private`.
pub fn write_atomic(path: &Path, text: &str, private: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    let target = link_target(path)?;
    let path = target.as_path();
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut builder = tempfile::Builder::new();
    builder.prefix(".clem-").suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        builder.permissions(std::fs::Permissions::from_mode(if private { 0o600 } else { 0o644 }));
    }
    let mut tmp =
        builder.tempfile_in(dir).with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(text.as_bytes())
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    tmp.persist(path).with_context(|| format!("{}", path.display()))?;
    Ok(())
}

/// The file a write to `path` must replace: `path` itself, or for a symbolic link the file it points to (through
/// every link), so that the rename replaces the target and the link stays a link.
fn link_target(path: &Path) -> anyhow::Result<PathBuf> {
    let mut current = path.to_path_buf();
    // A loop of links is refused by the OS when the file is opened; stop following after as many hops as Linux.
    for _ in 0..40 {
        match std::fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let next =
                    std::fs::read_link(&current).with_context(|| format!("reading the link {}", current.display()))?;
                current = match current.parent() {
                    Some(dir) if next.is_relative() => dir.join(next),
                    _ => next,
                };
            }
            _ => return Ok(current),
        }
    }
    bail!("{}: too many levels of symbolic links", path.display())
}

/// key.json sections clemcore documents; clemrs's backends add theirs (see [`known_sections`]).
const CLEMCORE_SECTIONS: &[&str] = &[
    "openai",
    "anthropic",
    "mistral",
    "cohere",
    "google",
    "huggingface",
    "openai_compatible",
    "openrouter",
    "azure_gpt",
    "azure_claude",
    "slurk",
];

/// Every section some backend reads, clemcore's included, sorted.
pub fn known_sections() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = CLEMCORE_SECTIONS.to_vec();
    names.extend(clem_backends::BACKENDS.iter().filter_map(|b| b.key_section));
    names.sort_unstable();
    names.dedup();
    names
}

/// Refuses an empty section name, and one no backend reads unless the file has it already (a typo would
/// otherwise write a key no call ever uses).
fn check_section(section: &str, path: &Path, existing: &Map<String, Value>) -> anyhow::Result<()> {
    let known = known_sections();
    if section.trim().is_empty() {
        bail!("the key.json section name is empty; known sections: {}", known.join(", "));
    }
    if known.contains(&section) || existing.contains_key(section) {
        return Ok(());
    }
    let hint =
        clem_core::suggest::did_you_mean(section, known.iter().copied().chain(existing.keys().map(String::as_str)));
    bail!(
        "{}: no backend reads a key.json section {section:?}{hint} (known sections: {})",
        path.display(),
        known.join(", ")
    )
}

fn register_key(section: &str, set: &[String], ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let path = ctx.keys_file.clone().unwrap_or_else(|| "key.json".into());
    let mut root = match read_json_or(&path, Value::Object(Map::new()))? {
        Value::Object(m) => m,
        _ => bail!("{}: must hold an object of sections", path.display()),
    };
    check_section(section, &path, &root)?;
    let entry = root.entry(section.to_string()).or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(sec) = entry else { bail!("{}: section {section:?} is not an object", path.display()) };
    let mut shown = Vec::new();
    for s in set {
        let (key, value) = parse_assignment(s)?;
        let secret = key.last().is_some_and(|k| k.to_ascii_lowercase().contains("key"));
        shown.push(match (&value, secret) {
            (Value::String(v), true) => format!("{}={}", key.join("."), mask(v)),
            (v, false) => format!("{}={v}", key.join(".")),
            (_, true) => format!("{}=****", key.join(".")),
        });
        set_path(sec, &key, value)?;
    }
    write_atomic(&path, &(serde_json::to_string_pretty(&Value::Object(root))? + "\n"), true)?;
    println!("{}: section {section}: {}", path.display(), shown.join(", "));
    Ok(ExitCode::SUCCESS)
}

fn register_model(name: &str, backend: &str, set: &[String], ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let path = ctx.sources.files.first().map_or(Path::new(LOCAL_REGISTRY), PathBuf::as_path);
    let mut list = match read_json_or(path, Value::Array(Vec::new()))? {
        Value::Array(items) => items,
        obj @ Value::Object(_) => vec![obj],
        _ => bail!("{}: must hold a list of entries", path.display()),
    };
    let pos = list.iter().position(|e| e.get("model_name").and_then(Value::as_str) == Some(name));
    let (index, action) = match pos {
        Some(i) => (i, "updated"),
        None => {
            let mut m = Map::new();
            m.insert("model_name".into(), Value::String(name.into()));
            list.push(Value::Object(m));
            (list.len() - 1, "added")
        }
    };
    let Some(Value::Object(entry)) = list.get_mut(index) else {
        bail!("{}: entry {index} is not an object", path.display())
    };
    entry.insert("backend".into(), Value::String(backend.into()));
    for s in set {
        let (key, value) = parse_assignment(s)?;
        set_path(entry, &key, value)?;
    }
    // The loader's own check, before writing: an entry it would refuse is not written.
    let checked = Value::Object(entry.clone());
    let problems =
        clem_core::schema::check_entry(&checked, &path.display().to_string(), index, &clem_backends::schemas());
    let refused = clem_core::registry::has_errors(&problems);
    // Refused: only the errors (the warnings would bury them).
    for p in problems.iter().filter(|p| !refused || p.severity == clem_core::schema::Severity::Error) {
        eprintln!("clem: {p}");
    }
    if refused {
        bail!("{}: entry {index} ({name}) not written: the errors above would stop it from loading", path.display());
    }
    write_atomic(path, &(serde_json::to_string_pretty(&Value::Array(list))? + "\n"), false)?;
    println!("{}: entry {index} ({name}) {action}", path.display());
    Ok(ExitCode::SUCCESS)
}
