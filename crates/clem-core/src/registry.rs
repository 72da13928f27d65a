//! The model registry: entries from `--registry` files, `./model_registry.json`, the user's
//! `~/.clemcore/model_registry.json` and the packaged registry, in that priority order; selection of the first
//! entry that unifies with a selector; the strict check.
//!
//! Loading is lenient (a bad entry is kept and reported, never dropped silently); checking is strict.
//! Each entry remembers its [`Origin`]: a registry in the working directory is data, not code (it may come
//! with a cloned repository), so the backends refuse to run a program it names; see [`Origin::may_name_programs`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::Value;

use crate::schema::{check_entry, BackendSchema, Problem, Severity};
use crate::spec::ModelSpec;

/// The registry that ships inside the binary.
pub const PACKAGED_REGISTRY: &str = include_str!("../data/model_registry.json");
/// How the packaged registry is named in messages.
pub const PACKAGED_NAME: &str = "<packaged model_registry.json>";
/// The registry file looked up in the working directory.
pub const LOCAL_REGISTRY: &str = "model_registry.json";
/// The user's own registry, under the home folder (beside `key.json`).
pub const HOME_REGISTRY: &str = ".clemcore/model_registry.json";

/// Where a registry entry was read from; it decides what the entry may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A `--registry FILE` named on the command line, or text a program added itself.
    CommandLine,
    /// `./model_registry.json`: whatever folder `clem` runs in, possibly someone else's.
    WorkingDir,
    /// `~/.clemcore/model_registry.json`, the user's own configuration.
    Home,
    /// The registry compiled into the binary.
    Packaged,
}

impl Origin {
    /// Whether an entry from here may name a program to run (vllm's `model_config.launcher`). Only a registry in
    /// the working directory may not: it is found, not chosen.
    pub fn may_name_programs(self) -> bool {
        self != Origin::WorkingDir
    }
}

/// One entry as it stands in its file.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The entry's JSON, whatever it is (a non-object entry is kept to be reported).
    pub value: Value,
    pub file: Arc<str>,
    pub index: usize,
    pub origin: Origin,
}

impl Entry {
    /// The entry as a spec; `None` when it is not an object.
    pub fn spec(&self) -> Option<ModelSpec> {
        match &self.value {
            Value::Object(m) => Some(ModelSpec::new(m.clone())),
            _ => None,
        }
    }

    pub fn model_name(&self) -> Option<&str> {
        self.value.get("model_name").and_then(Value::as_str)
    }

    pub fn backend(&self) -> Option<&str> {
        self.value.get("backend").and_then(Value::as_str)
    }

    /// Every problem of this entry.
    pub fn check(&self, schemas: &[BackendSchema]) -> Vec<Problem> {
        check_entry(&self.value, &self.file, self.index, schemas)
    }

    /// `file: entry N (name)`, for messages.
    pub fn location(&self) -> String {
        match self.model_name() {
            Some(n) => format!("{}: entry {} ({n})", self.file, self.index),
            None => format!("{}: entry {}", self.file, self.index),
        }
    }
}

/// A registry file that cannot be read at all.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{}: cannot read: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{file}: invalid JSON at line {line}, column {column}: {message}")]
    Json { file: String, line: usize, column: usize, message: String },
    #[error("{file}: a registry must be a list of entries or a single entry object, not {kind}")]
    NotAList { file: String, kind: &'static str },
}

/// No entry unifies with the selector.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("no model entry unifies with {selector} (searched {searched} entries in: {sources}){hint}")]
pub struct NoMatch {
    pub selector: String,
    pub searched: usize,
    pub sources: String,
    /// `; did you mean "x"?` (the nearest model names), or why an entry of that very name did not unify; may be
    /// empty.
    pub hint: String,
}

/// The entries of all sources, highest priority first.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    entries: Vec<Entry>,
    sources: Vec<String>,
}

/// Which registries to read.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    /// `--registry` files, in command-line order.
    pub files: Vec<PathBuf>,
    /// `--no-default-registries`: neither `./model_registry.json`, `~/.clemcore/model_registry.json` nor the
    /// packaged one.
    pub no_defaults: bool,
}

impl Registry {
    /// Reads the sources in priority order.
    pub fn load(sources: &Sources) -> Result<Registry, RegistryError> {
        let mut reg = Registry::default();
        for f in &sources.files {
            reg.add_file(f)?;
        }
        if !sources.no_defaults {
            let local = Path::new(LOCAL_REGISTRY);
            let home = dirs::home_dir().map(|h| h.join(HOME_REGISTRY)).filter(|h| h.is_file());
            // Run inside ~/.clemcore, the working-directory file is the user's own one: read it once, as such.
            let local_is_home = home.as_ref().is_some_and(|h| same_file(local, h));
            if local.is_file() && !local_is_home {
                reg.add_file_from(local, Origin::WorkingDir)?;
            }
            if let Some(home) = home {
                reg.add_file_from(&home, Origin::Home)?;
            }
            reg.add_str_from(PACKAGED_REGISTRY, PACKAGED_NAME, Origin::Packaged)?;
        }
        Ok(reg)
    }

    /// Only the packaged registry.
    pub fn packaged() -> Result<Registry, RegistryError> {
        let mut reg = Registry::default();
        reg.add_str_from(PACKAGED_REGISTRY, PACKAGED_NAME, Origin::Packaged)?;
        Ok(reg)
    }

    /// Adds a file the user named (origin [`Origin::CommandLine`]).
    pub fn add_file(&mut self, path: &Path) -> Result<(), RegistryError> {
        self.add_file_from(path, Origin::CommandLine)
    }

    pub fn add_file_from(&mut self, path: &Path, origin: Origin) -> Result<(), RegistryError> {
        let text = std::fs::read_to_string(path).map_err(|source| RegistryError::Read { path: path.into(), source })?;
        self.add_str_from(&text, &path.display().to_string(), origin)
    }

    /// Adds the entries of one registry text given by the program or the user (origin [`Origin::CommandLine`]).
    pub fn add_str(&mut self, text: &str, name: &str) -> Result<(), RegistryError> {
        self.add_str_from(text, name, Origin::CommandLine)
    }

    /// Adds the entries of one registry text (a list, or a single entry object).
    pub fn add_str_from(&mut self, text: &str, name: &str, origin: Origin) -> Result<(), RegistryError> {
        let json_error = |e: serde_json::Error| RegistryError::Json {
            file: name.into(),
            line: e.line(),
            column: e.column(),
            message: match crate::keys::strip_position(&e.to_string()) {
                m if m == "recursion limit exceeded" => {
                    "nested more than 128 levels deep (JSON recursion limit)".into()
                }
                m => m,
            },
        };
        // Validate the whole text first (errors keep their line and column), without building any map yet.
        let raw: &RawValue = serde_json::from_str(text).map_err(json_error)?;
        let items: Vec<Value> = match raw.get().trim_start().as_bytes().first() {
            Some(b'[') => {
                let parts: Vec<&RawValue> = serde_json::from_str(raw.get()).map_err(json_error)?;
                parse_parallel(&parts).map_err(json_error)?
            }
            _ => match serde_json::from_str(raw.get()).map_err(json_error)? {
                obj @ Value::Object(_) => vec![obj],
                other => {
                    return Err(RegistryError::NotAList { file: name.into(), kind: crate::spec::json_kind(&other) })
                }
            },
        };
        let file: Arc<str> = Arc::from(name);
        self.entries.extend(items.into_iter().enumerate().map(|(index, value)| Entry {
            value,
            file: file.clone(),
            index,
            origin,
        }));
        self.sources.push(name.into());
        Ok(())
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn sources(&self) -> &[String] {
        &self.sources
    }

    /// The first entry, in order, that unifies with the selector, and the unified spec.
    pub fn select(&self, selector: &ModelSpec) -> Result<(ModelSpec, &Entry), NoMatch> {
        for entry in &self.entries {
            let Value::Object(map) = &entry.value else { continue };
            if let Some(unified) = selector.unify_with_entry(map) {
                return Ok((unified, entry));
            }
        }
        Err(NoMatch {
            selector: selector.to_string(),
            searched: self.entries.len(),
            sources: self.sources.join(", "),
            hint: self.no_match_hint(selector),
        })
    }

    /// For a selector that matched nothing: the model names nearest to its `model_name`, or, when entries of that
    /// name exist, that the selector's other keys conflict with them.
    fn no_match_hint(&self, selector: &ModelSpec) -> String {
        let Some(name) = selector.model_name() else { return String::new() };
        if self.entries.iter().any(|e| e.model_name() == Some(name)) {
            return format!("; entries named {name:?} exist, but another key of the selector conflicts with each");
        }
        let mut names: Vec<&str> = self.entries.iter().filter_map(Entry::model_name).collect();
        names.sort_unstable();
        names.dedup();
        crate::suggest::did_you_mean(name, names)
    }

    /// Entries of `./model_registry.json` that a name selects instead of a home or packaged entry of the same
    /// `model_name`: `(working-directory entry, the entry it hides)`, in registry order.
    pub fn shadowing(&self) -> Vec<(&Entry, &Entry)> {
        if !self.entries.iter().any(|e| e.origin == Origin::WorkingDir) {
            return Vec::new();
        }
        let mut first: std::collections::HashMap<&str, &Entry> = std::collections::HashMap::new();
        let mut hidden: std::collections::HashMap<&str, &Entry> = std::collections::HashMap::new();
        for e in &self.entries {
            let Some(name) = e.model_name() else { continue };
            if !first.contains_key(name) {
                first.insert(name, e);
            } else if matches!(e.origin, Origin::Home | Origin::Packaged) {
                hidden.entry(name).or_insert(e);
            }
        }
        let mut out: Vec<(&Entry, &Entry)> = first
            .iter()
            .filter(|(_, e)| e.origin == Origin::WorkingDir)
            .filter_map(|(name, e)| Some((*e, *hidden.get(name)?)))
            .collect();
        out.sort_by_key(|(e, _)| e.index);
        out
    }

    /// One line saying that `./model_registry.json` hides entries, if it does (for a warning on stderr).
    pub fn shadow_warning(&self) -> Option<String> {
        let all = self.shadowing();
        let (entry, hidden) = all.first()?;
        let more = match all.len() - 1 {
            0 => String::new(),
            1 => " (and 1 more entry of that file hides another)".into(),
            n => format!(" (and {n} more entries of that file hide others)"),
        };
        Some(format!(
            "{} in the working directory shadows {}{more}; `clem list models -v` shows where each entry comes from",
            entry.location(),
            hidden.location()
        ))
    }

    /// Every problem of every entry, in registry order.
    pub fn check(&self, schemas: &[BackendSchema]) -> Vec<Problem> {
        in_chunks(&self.entries, |chunk| chunk.iter().flat_map(|e| e.check(schemas)).collect::<Vec<_>>())
            .into_iter()
            .flatten()
            .collect()
    }
}

/// Below this many entries one thread is faster than starting others.
const PARALLEL_MIN: usize = 512;

/// Runs `f` on consecutive chunks of `items`, one thread per core for large inputs; results in input order.
/// Large registries (clembench's has hundreds of entries, generated ones thousands) load and check in parallel.
fn in_chunks<T: Sync, R: Send>(items: &[T], f: impl Fn(&[T]) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, usize::from).min(8);
    if items.len() < PARALLEL_MIN || threads < 2 {
        return vec![f(items)];
    }
    let size = items.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = items.chunks(size).map(|chunk| scope.spawn(|| f(chunk))).collect();
        // A chunk's thread only panics if `f` does; re-raise it here rather than lose entries.
        handles.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    })
}

/// Parses already-validated entries into values, in parallel for large registries.
fn parse_parallel(parts: &[&RawValue]) -> Result<Vec<Value>, serde_json::Error> {
    let chunks = in_chunks(parts, |chunk| {
        chunk.iter().map(|raw| serde_json::from_str::<Value>(raw.get())).collect::<Result<Vec<_>, _>>()
    });
    let mut values = Vec::with_capacity(parts.len());
    for chunk in chunks {
        values.extend(chunk?);
    }
    Ok(values)
}

/// Whether two paths name the same file (both must exist).
fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Whether any problem is an error.
pub fn has_errors(problems: &[Problem]) -> bool {
    problems.iter().any(|p| p.severity == Severity::Error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reg(text: &str) -> Registry {
        let mut r = Registry::default();
        r.add_str(text, "test.json").expect("loads");
        r
    }

    #[test]
    fn first_unifying_entry_wins() {
        let r = reg(r#"[
            {"model_name": "a", "backend": "openai", "model_config": {"x": 1}},
            {"model_name": "b", "backend": "llamacpp"},
            {"model_name": "a", "backend": "anthropic"},
            7
        ]"#);
        let pick = |sel: &str| {
            r.select(&ModelSpec::parse_selector(sel).expect("selector"))
                .map(|(_, e)| e.index)
                .map_err(|e| e.to_string())
        };
        assert_eq!(pick("a"), Ok(0));
        assert_eq!(pick(r#"{"backend": "llamacpp"}"#), Ok(1));
        assert_eq!(pick(r#"{"model_name": "a", "backend": "anthropic"}"#), Ok(2));
        assert_eq!(pick(r#"{"model_name": "a", "model_config": {"x": 2}}"#), Ok(2));
        let err = pick("zzz").expect_err("no match");
        assert!(err.contains(r#"{"model_name":"zzz"}"#) && err.contains("test.json"), "{err}");
        assert!(!err.contains("did you mean"), "{err}");
        // A near name is suggested; a known name whose other keys conflict is said to exist.
        assert!(pick("aa").expect_err("no match").ends_with("; did you mean \"a\" or \"b\"?"));
        let err = pick(r#"{"model_name": "b", "backend": "openai"}"#).expect_err("no match");
        assert!(
            err.ends_with("entries named \"b\" exist, but another key of the selector conflicts with each"),
            "{err}"
        );
        let (spec, _) =
            r.select(&ModelSpec::parse_selector(r#"{"model_name": "a", "extra": 5}"#).expect("sel")).expect("found");
        assert_eq!(spec.get("extra"), Some(&json!(5)));
    }

    #[test]
    fn single_object_and_json_errors() {
        assert_eq!(reg(r#"{"model_name": "solo", "backend": "openai"}"#).entries().len(), 1);
        let mut r = Registry::default();
        let e = r.add_str("[\n{\"model_name\": }\n]", "bad.json").expect_err("invalid");
        assert_eq!(e.to_string(), "bad.json: invalid JSON at line 2, column 16: expected value");
        let e = r.add_str("3", "n.json").expect_err("not a list");
        assert!(e.to_string().contains("not a number"), "{e}");
    }

    #[test]
    fn large_registries_keep_order_and_error_positions() {
        // Above PARALLEL_MIN entries parsing and checking run in chunks: order, indices and problems must not move.
        let n = 3 * PARALLEL_MIN + 7;
        let entries: Vec<String> = (0..n)
            .map(|i| {
                let backend = if i % 100 == 99 { "no_such_backend" } else { "openai" };
                format!(r#"{{"model_name": "m{i}", "backend": "{backend}", "model_id": "x"}}"#)
            })
            .collect();
        let r = reg(&format!("[{}]", entries.join(",\n")));
        assert_eq!(r.entries().len(), n);
        for (i, e) in r.entries().iter().enumerate() {
            assert_eq!((e.index, e.model_name()), (i, Some(format!("m{i}").as_str())));
        }
        let bad: Vec<Option<usize>> = r
            .check(&[crate::schema::BackendSchema {
                name: "openai",
                aliases: &[],
                entry_required: &[],
                entry_optional: &[],
                config_required: &[],
                config_optional: &[],
            }])
            .iter()
            .filter(|p| p.key == "backend")
            .map(|p| p.index)
            .collect();
        assert_eq!(bad, (0..n).filter(|i| i % 100 == 99).map(Some).collect::<Vec<_>>());
        let mut broken = entries.clone();
        broken[1000] = "{\"model_name\": }".into();
        let e = Registry::default().add_str(&format!("[{}]", broken.join(",\n")), "big.json").expect_err("invalid");
        assert!(e.to_string().starts_with("big.json: invalid JSON at line 1001, column 16"), "{e}");
    }

    #[test]
    fn entries_keep_their_origin_and_shadowing_is_reported_once() {
        let mut r = Registry::default();
        r.add_str(r#"[{"model_name": "cli-only"}, {"model_name": "both"}]"#, "cli.json").expect("cli");
        r.add_str_from(
            r#"[{"model_name": "both"}, {"model_name": "gpt-x"}, {"model_name": "mine"}, {"model_name": "h"}]"#,
            LOCAL_REGISTRY,
            Origin::WorkingDir,
        )
        .expect("local");
        r.add_str_from(r#"[{"model_name": "h"}]"#, "home.json", Origin::Home).expect("home");
        r.add_str_from(r#"[{"model_name": "both"}, {"model_name": "gpt-x"}]"#, PACKAGED_NAME, Origin::Packaged)
            .expect("packaged");
        let origins: Vec<Origin> = r.entries().iter().map(|e| e.origin).collect();
        use Origin::*;
        assert_eq!(
            origins,
            [CommandLine, CommandLine, WorkingDir, WorkingDir, WorkingDir, WorkingDir, Home, Packaged, Packaged]
        );
        assert!(!WorkingDir.may_name_programs() && CommandLine.may_name_programs() && Home.may_name_programs());
        // "both" is picked from cli.json, so the local one hides nothing; "gpt-x" and "h" are hidden.
        let pairs: Vec<(String, String)> = r.shadowing().iter().map(|(a, b)| (a.location(), b.location())).collect();
        assert_eq!(
            pairs,
            [
                ("model_registry.json: entry 1 (gpt-x)".to_string(), format!("{PACKAGED_NAME}: entry 1 (gpt-x)")),
                ("model_registry.json: entry 3 (h)".to_string(), "home.json: entry 0 (h)".to_string()),
            ]
        );
        let w = r.shadow_warning().expect("warns");
        assert_eq!(w.lines().count(), 1);
        assert!(w.starts_with("model_registry.json: entry 1 (gpt-x) in the working directory shadows"), "{w}");
        assert!(w.contains("and 1 more entry"), "{w}");
        assert_eq!(reg(r#"[{"model_name": "a"}]"#).shadow_warning(), None);
    }

    #[test]
    fn deeply_nested_registry_json_is_a_clear_error() {
        let deep = format!("[{{\"model_name\": \"x\", \"k\": {}1{}}}]", "[".repeat(200), "]".repeat(200));
        let e = Registry::default().add_str(&deep, "deep.json").expect_err("too deep").to_string();
        // serde_json stops at 128 levels; its "recursion limit exceeded" gets the number said.
        assert!(e.starts_with("deep.json: invalid JSON at line 1, column"), "{e}");
        assert!(e.ends_with(": nested more than 128 levels deep (JSON recursion limit)"), "{e}");
    }

    #[test]
    fn packaged_registry_parses() {
        let r = Registry::packaged().expect("packaged registry is valid JSON");
        assert!(!r.entries().is_empty());
    }
}
