//! Hugging Face model folders: where a `huggingface_id` lives on disk (a local path or the standard hub
//! cache), and what the tokenizer files say (special tokens, chat templates).
//!
//! Offline only: downloading is the local backends' business. Cache lookup follows huggingface_hub:
//! `HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`, then
//! `models--ORG--NAME/snapshots/<refs/main>/`.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// A model folder or tokenizer file that cannot be found or read.
#[derive(Debug, thiserror::Error)]
pub enum HfError {
    #[error("{id}: not a folder and not in the Hugging Face cache ({cache}); download it first or give a path")]
    NotFound { id: String, cache: String },
    #[error("{}: cannot read: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: invalid JSON at line {line}, column {column}: {message}", path.display())]
    Json { path: PathBuf, line: usize, column: usize, message: String },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

/// The hub cache folder, as huggingface_hub finds it.
pub fn hub_cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("HF_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(p).join("hub");
    }
    dirs::home_dir().unwrap_or_else(|| PathBuf::from(".")).join(".cache").join("huggingface").join("hub")
}

/// The folder of a model in a hub cache: `models--org--name/snapshots/<revision>`, where the revision is
/// what `refs/main` names, else the only (or newest) snapshot.
pub fn cached_snapshot(cache: &Path, repo_id: &str) -> Option<PathBuf> {
    let repo = cache.join(format!("models--{}", repo_id.replace('/', "--")));
    let snapshots = repo.join("snapshots");
    if let Ok(rev) = std::fs::read_to_string(repo.join("refs").join("main")) {
        // A commit hash names one folder; an empty or path-like ref (outside input) names none.
        let rev = rev.trim();
        let plain = !matches!(rev, "" | "." | "..") && !rev.contains(['/', '\\']);
        let dir = snapshots.join(rev);
        if plain && dir.is_dir() {
            return Some(dir);
        }
    }
    let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&snapshots)
        .ok()?
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| (e.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH), e.path()))
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, p)| p)
}

/// A local folder as given, else the cached snapshot of a hub id.
pub fn resolve_model_dir(id_or_path: &str) -> Result<PathBuf, HfError> {
    let p = Path::new(id_or_path);
    if p.is_dir() {
        return Ok(p.to_path_buf());
    }
    let cache = hub_cache_dir();
    cached_snapshot(&cache, id_or_path)
        .ok_or_else(|| HfError::NotFound { id: id_or_path.into(), cache: cache.display().to_string() })
}

/// What the tokenizer files of a model folder say.
#[derive(Clone, Debug, Default)]
pub struct TokenizerFiles {
    pub dir: PathBuf,
    /// `tokenizer_config.json`, as read (empty when the file is absent).
    pub config: Map<String, Value>,
    /// Named chat templates; the unnamed/default one is called `default`.
    pub chat_templates: Vec<(String, String)>,
    /// Where the default chat template came from.
    pub template_file: Option<PathBuf>,
}

/// Names of the special tokens transformers passes to chat templates.
pub const SPECIAL_TOKEN_NAMES: [&str; 7] =
    ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"];

impl TokenizerFiles {
    /// Reads `tokenizer_config.json` and `chat_template.jinja` (transformers 5 writes the latter; it wins).
    pub fn load(dir: &Path) -> Result<TokenizerFiles, HfError> {
        let mut tf = TokenizerFiles { dir: dir.into(), ..Default::default() };
        let config_path = dir.join("tokenizer_config.json");
        if config_path.is_file() {
            tf.config = match read_json(&config_path)? {
                Value::Object(m) => m,
                _ => return Err(HfError::Invalid { path: config_path, message: "must hold an object".into() }),
            };
            match tf.config.get("chat_template") {
                Some(Value::String(s)) => {
                    tf.chat_templates.push(("default".into(), s.clone()));
                    tf.template_file = Some(config_path.clone());
                }
                Some(Value::Array(items)) => {
                    for item in items {
                        let (Some(name), Some(t)) =
                            (item.get("name").and_then(Value::as_str), item.get("template").and_then(Value::as_str))
                        else {
                            return Err(HfError::Invalid {
                                path: config_path,
                                message: "chat_template list items need \"name\" and \"template\" strings".into(),
                            });
                        };
                        tf.chat_templates.push((name.into(), t.into()));
                    }
                    tf.template_file = Some(config_path.clone());
                }
                _ => {}
            }
        }
        let jinja = dir.join("chat_template.jinja");
        if jinja.is_file() {
            let source =
                std::fs::read_to_string(&jinja).map_err(|source| HfError::Read { path: jinja.clone(), source })?;
            tf.chat_templates.retain(|(n, _)| n != "default");
            tf.chat_templates.insert(0, ("default".into(), source));
            tf.template_file = Some(jinja);
        }
        Ok(tf)
    }

    /// The default chat template (or the named one).
    pub fn chat_template(&self, name: Option<&str>) -> Option<&str> {
        let want = name.unwrap_or("default");
        self.chat_templates.iter().find(|(n, _)| n == want).map(|(_, t)| t.as_str())
    }

    /// A special token's text; tokenizer_config holds a string or an AddedToken object `{"content": ...}`.
    pub fn special_token(&self, name: &str) -> Option<String> {
        match self.config.get(name)? {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => o.get("content").and_then(Value::as_str).map(String::from),
            _ => None,
        }
    }

    /// The variables transformers adds to a template rendering: every special token that is set, and
    /// `additional_special_tokens`.
    pub fn template_variables(&self) -> Map<String, Value> {
        let mut vars = Map::new();
        for name in SPECIAL_TOKEN_NAMES {
            if let Some(tok) = self.special_token(name) {
                vars.insert(name.into(), Value::String(tok));
            }
        }
        if let Some(Value::Array(extra)) = self.config.get("additional_special_tokens") {
            let toks: Vec<Value> = extra
                .iter()
                .filter_map(|t| match t {
                    Value::String(s) => Some(Value::String(s.clone())),
                    Value::Object(o) => o.get("content").cloned(),
                    _ => None,
                })
                .collect();
            vars.insert("additional_special_tokens".into(), Value::Array(toks));
        }
        vars
    }
}

/// Reads a JSON file with file, line and column in errors.
pub fn read_json(path: &Path) -> Result<Value, HfError> {
    let text = std::fs::read_to_string(path).map_err(|source| HfError::Read { path: path.into(), source })?;
    serde_json::from_str(&text).map_err(|e| HfError::Json {
        path: path.into(),
        line: e.line(),
        column: e.column(),
        message: crate::keys::strip_position(&e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_layout_and_tokenizer_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let repo = tmp.path().join("models--org--tiny");
        let snap = repo.join("snapshots").join("abc123");
        std::fs::create_dir_all(&snap).expect("mkdir");
        std::fs::create_dir_all(repo.join("refs")).expect("mkdir");
        std::fs::write(repo.join("refs").join("main"), "abc123\n").expect("write");
        std::fs::write(
            snap.join("tokenizer_config.json"),
            r#"{"bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>", "pad_token": null,
                "chat_template": [{"name": "default", "template": "A"}, {"name": "tool_use", "template": "B"}]}"#,
        )
        .expect("write");
        assert_eq!(cached_snapshot(tmp.path(), "org/tiny"), Some(snap.clone()));
        assert_eq!(cached_snapshot(tmp.path(), "org/other"), None);
        // A ref naming no snapshot (empty, or a path) falls back to the newest snapshot.
        for bad in ["", "\n", "..", "../snapshots", "."] {
            std::fs::write(repo.join("refs").join("main"), bad).expect("write");
            assert_eq!(cached_snapshot(tmp.path(), "org/tiny"), Some(snap.clone()), "{bad:?}");
        }
        let tf = TokenizerFiles::load(&snap).expect("loads");
        assert_eq!(tf.chat_template(None), Some("A"));
        assert_eq!(tf.chat_template(Some("tool_use")), Some("B"));
        let vars = tf.template_variables();
        assert_eq!(vars.get("bos_token"), Some(&Value::String("<s>".into())));
        assert!(!vars.contains_key("pad_token"));
        std::fs::write(snap.join("chat_template.jinja"), "J").expect("write");
        assert_eq!(TokenizerFiles::load(&snap).expect("loads").chat_template(None), Some("J"));
    }
}
