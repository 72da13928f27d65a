//! Credentials from `key.json`, with environment variables as a documented fallback. Secrets never print.
//!
//! Lookup, first that exists is used alone: `--keys FILE`, `./key.json`, `~/.clemcore/key.json`. A file that
//! exists but cannot be read or parsed is an error naming it (and the line and column), never skipped: skipping
//! it would silently use the next file's keys, another account's perhaps.
//! A section missing from that file falls back to the environment variables in [`ENV_FALLBACK`].
//! A key file other users may read (or write) is used, with a warning ([`Keys::permission_warning`]).

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// A secret string: `Debug` and `Display` show it masked, only [`Secret::expose`] gives it out.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret in clear, for the one place that sends it (an HTTP header).
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn masked(&self) -> String {
        mask(&self.0)
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.masked())
    }
}
impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// clemcore's masking: `abcd...wxyz`; `****yz` for 8 characters or fewer.
pub fn mask(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() > 8 {
        let head: String = chars[..4].iter().collect();
        let tail: String = chars[chars.len() - 4..].iter().collect();
        format!("{head}...{tail}")
    } else if chars.len() > 2 {
        let tail: String = chars[chars.len() - 2..].iter().collect();
        format!("****{tail}")
    } else {
        "****".into()
    }
}

/// Where a credential came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    File(PathBuf),
    Env(String),
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::File(p) => write!(f, "{}", p.display()),
            KeySource::Env(v) => write!(f, "${v}"),
        }
    }
}

/// One section of key.json: `api_key` plus free extras (`organisation`, `base_url`, ...).
#[derive(Clone, Debug)]
pub struct KeySection {
    pub api_key: Option<Secret>,
    pub extras: Map<String, Value>,
    pub source: KeySource,
}

impl KeySection {
    pub fn extra_str(&self, key: &str) -> Option<&str> {
        self.extras.get(key).and_then(Value::as_str)
    }
}

/// One environment fallback: `(key.json section, api_key variable, [(extra, variable)])`.
pub type EnvFallback = (&'static str, &'static str, &'static [(&'static str, &'static str)]);

/// Environment fallbacks per key.json section.
pub const ENV_FALLBACK: &[EnvFallback] = &[
    ("openai", "OPENAI_API_KEY", &[("organisation", "OPENAI_ORG_ID")]),
    ("anthropic", "ANTHROPIC_API_KEY", &[]),
    ("google", "GEMINI_API_KEY", &[]),
    ("mistral", "MISTRAL_API_KEY", &[]),
    ("cohere", "CO_API_KEY", &[]),
    ("openrouter", "OPENROUTER_API_KEY", &[("base_url", "OPENROUTER_BASE_URL")]),
    ("openai_compatible", "OPENAI_COMPATIBLE_API_KEY", &[("base_url", "OPENAI_COMPATIBLE_BASE_URL")]),
    ("azure_gpt", "AZURE_OPENAI_API_KEY", &[("base_url", "AZURE_OPENAI_ENDPOINT")]),
    ("azure_claude", "AZURE_CLAUDE_API_KEY", &[("base_url", "AZURE_CLAUDE_ENDPOINT")]),
    ("huggingface", "HF_TOKEN", &[]),
    ("vllm", "VLLM_API_KEY", &[("base_url", "VLLM_BASE_URL")]),
];

/// A key.json that is present but unusable.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{}: cannot read: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: invalid JSON at line {line}, column {column}: {message}", path.display())]
    Json { path: PathBuf, line: usize, column: usize, message: String },
    #[error("{}: must hold an object of sections, e.g. {{\"openai\": {{\"api_key\": \"...\"}}}}", path.display())]
    NotAnObject { path: PathBuf },
    #[error("{}: section {section:?}, key {key:?}: must be a string", path.display())]
    NotAString { path: PathBuf, section: String, key: String },
    #[error("{}: section {section:?} must be an object", path.display())]
    SectionNotAnObject { path: PathBuf, section: String },
}

/// All credentials available to this process.
#[derive(Clone, Debug, Default)]
pub struct Keys {
    file: Option<PathBuf>,
    sections: Vec<(String, KeySection)>,
    /// Files that were tried and why they were not used (shown by `clem list keys`). Always empty since a
    /// broken key file became an error; kept for the callers that still print it.
    pub skipped: Vec<String>,
    env: Vec<(String, String)>,
    /// The key file's permission bits when group or others have any (unix).
    loose_mode: Option<u32>,
}

impl Keys {
    /// Looks up key.json as documented: the first file that exists is loaded, and a failure to load it is an
    /// error (an explicit `--keys FILE` must exist).
    pub fn discover(explicit: Option<&Path>) -> Result<Keys, KeyFileError> {
        let mut candidates = vec![PathBuf::from("key.json")];
        if let Some(home) = dirs::home_dir() {
            candidates.push(home.join(".clemcore").join("key.json"));
        }
        Self::discover_in(explicit, &candidates, std::env::vars().collect())
    }

    /// [`Keys::discover`] over given candidate files.
    fn discover_in(
        explicit: Option<&Path>,
        candidates: &[PathBuf],
        env: Vec<(String, String)>,
    ) -> Result<Keys, KeyFileError> {
        if let Some(path) = explicit {
            return Self::from_file(path, env);
        }
        // `symlink_metadata`: a dangling link is a file that exists and cannot be read (an error), not an absence.
        match candidates.iter().find(|p| std::fs::symlink_metadata(p).is_ok()) {
            Some(path) => Self::from_file(path, env),
            None => Ok(Keys { file: None, sections: Vec::new(), skipped: Vec::new(), env, loose_mode: None }),
        }
    }

    /// Reads one key file; `env` supplies the fallbacks.
    pub fn from_file(path: &Path, env: Vec<(String, String)>) -> Result<Keys, KeyFileError> {
        use std::io::Read as _;
        let read = |source| KeyFileError::Read { path: path.into(), source };
        let mut file = std::fs::File::open(path).map_err(read)?;
        // The mode of the file actually read (fstat), not of whatever the path names a moment later.
        let mode = file.metadata().map_err(read)?;
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(read)?;
        let mut keys = Self::from_json_str(&text, path)?;
        keys.env = env;
        keys.loose_mode = loose_mode(&mode);
        Ok(keys)
    }

    /// A warning when the key file in use can be read or written by group or others, naming the fix.
    pub fn permission_warning(&self) -> Option<String> {
        let (mode, file) = (self.loose_mode?, self.file.as_ref()?);
        let f = file.display();
        Some(format!(
            "{f}: key file is accessible to other users (mode {mode:04o}); restrict it to yourself: chmod 600 {f}"
        ))
    }

    /// Parses key.json text (no environment fallback).
    pub fn from_json_str(text: &str, path: &Path) -> Result<Keys, KeyFileError> {
        let value: Value = serde_json::from_str(text).map_err(|e| KeyFileError::Json {
            path: path.into(),
            line: e.line(),
            column: e.column(),
            message: strip_position(&e.to_string()),
        })?;
        let Value::Object(obj) = value else {
            return Err(KeyFileError::NotAnObject { path: path.into() });
        };
        let mut sections = Vec::new();
        for (name, section) in obj {
            let Value::Object(mut fields) = section else {
                return Err(KeyFileError::SectionNotAnObject { path: path.into(), section: name });
            };
            let api_key = match fields.shift_remove("api_key") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(Secret::new(s)),
                Some(_) => {
                    return Err(KeyFileError::NotAString { path: path.into(), section: name, key: "api_key".into() })
                }
            };
            sections.push((name, KeySection { api_key, extras: fields, source: KeySource::File(path.into()) }));
        }
        Ok(Keys { file: Some(path.into()), sections, skipped: Vec::new(), env: Vec::new(), loose_mode: None })
    }

    /// Keys from the environment only (tests, or machines without key.json).
    pub fn from_env(env: Vec<(String, String)>) -> Keys {
        Keys { env, ..Keys::default() }
    }

    /// The key file in use, if any.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// A section from key.json, else from the environment fallback.
    pub fn section(&self, name: &str) -> Option<KeySection> {
        if let Some((_, s)) = self.sections.iter().find(|(n, _)| n == name) {
            return Some(s.clone());
        }
        let (_, var, extra_vars) = ENV_FALLBACK.iter().find(|(s, _, _)| *s == name)?;
        let get = |v: &str| self.env.iter().find(|(k, _)| k == v).map(|(_, val)| val.clone());
        let api_key = get(var)?;
        let mut extras = Map::new();
        for (extra, extra_var) in extra_vars.iter() {
            if let Some(val) = get(extra_var) {
                extras.insert((*extra).into(), Value::String(val));
            }
        }
        Some(KeySection { api_key: Some(Secret::new(api_key)), extras, source: KeySource::Env((*var).into()) })
    }

    /// Every section name available, file sections first, then environment ones.
    pub fn section_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.sections.iter().map(|(n, _)| n.clone()).collect();
        for (section, var, _) in ENV_FALLBACK {
            if !names.iter().any(|n| n == section) && self.env.iter().any(|(k, _)| k == var) {
                names.push((*section).into());
            }
        }
        names
    }
}

/// The permission bits when group or others have any.
#[cfg(unix)]
fn loose_mode(meta: &std::fs::Metadata) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = meta.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

#[cfg(not(unix))]
fn loose_mode(_: &std::fs::Metadata) -> Option<u32> {
    None
}

/// serde_json appends " at line L column C"; we report those separately.
pub(crate) fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking() {
        assert_eq!(mask("sk-abcdefghijklmnop"), "sk-a...mnop");
        assert_eq!(mask("abcdefgh"), "****gh");
        assert_eq!(mask("ab"), "****");
        let s = Secret::new("sk-verysecretvalue123");
        assert!(!format!("{s:?} {s}").contains("verysecret"));
    }

    #[test]
    fn file_first_then_env() {
        let keys = Keys::from_json_str(
            r#"{"openai": {"api_key": "sk-file-0123456789", "organisation": "org-1"}}"#,
            Path::new("key.json"),
        )
        .expect("parses");
        let keys = Keys { env: vec![("ANTHROPIC_API_KEY".into(), "env-key-0123456789".into())], ..keys };
        let openai = keys.section("openai").expect("openai");
        assert_eq!(openai.api_key.as_ref().map(Secret::expose), Some("sk-file-0123456789"));
        assert_eq!(openai.extra_str("organisation"), Some("org-1"));
        let anthropic = keys.section("anthropic").expect("from env");
        assert_eq!(anthropic.source, KeySource::Env("ANTHROPIC_API_KEY".into()));
        assert!(keys.section("mistral").is_none());
        assert_eq!(keys.section_names(), vec!["openai", "anthropic"]);
    }

    /// Before: a key.json readable by everyone loaded without a word.
    #[cfg(unix)]
    #[test]
    fn loose_key_file_modes_warn() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key.json");
        std::fs::write(&path, r#"{"openai": {"api_key": "sk-0123456789"}}"#).expect("write");
        for (mode, warns) in [(0o644, true), (0o640, true), (0o602, true), (0o600, false), (0o400, false)] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let keys = Keys::from_file(&path, vec![]).expect("loads");
            let w = keys.permission_warning();
            assert_eq!(w.is_some(), warns, "{mode:o}: {w:?}");
            if let Some(w) = w {
                assert!(
                    w.contains(&format!("chmod 600 {}", path.display())) && w.contains(&format!("{mode:04o}")),
                    "{w}"
                );
            }
        }
    }

    /// Before: a ./key.json that did not parse was skipped and the next file's keys were used without a word.
    #[test]
    fn a_broken_first_file_is_an_error_not_a_skip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (first, second) = (dir.path().join("key.json"), dir.path().join("home.json"));
        std::fs::write(&first, "{\n  \"openai\": {\"api_key\": \"sk-local\",}\n}").expect("write");
        std::fs::write(&second, r#"{"openai": {"api_key": "sk-other-account"}}"#).expect("write");
        let e = Keys::discover_in(None, &[first.clone(), second.clone()], vec![]).expect_err("broken");
        let msg = e.to_string();
        assert!(msg.starts_with(&format!("{}: invalid JSON at line 2, column", first.display())), "{msg}");
        let keys = Keys::discover_in(None, &[dir.path().join("absent.json"), second.clone()], vec![]).expect("loads");
        assert_eq!(keys.file(), Some(second.as_path()));
        let none = Keys::discover_in(None, &[dir.path().join("absent.json")], vec![]).expect("no file");
        assert!(none.file().is_none());
    }

    #[test]
    fn bad_files_say_where() {
        let e = Keys::from_json_str("{\n  \"openai\": ", Path::new("k.json")).expect_err("invalid");
        assert!(e.to_string().starts_with("k.json: invalid JSON at line 2"), "{e}");
        let e = Keys::from_json_str(r#"{"openai": {"api_key": 5}}"#, Path::new("k.json")).expect_err("bad");
        assert!(e.to_string().contains("\"openai\""), "{e}");
    }
}
