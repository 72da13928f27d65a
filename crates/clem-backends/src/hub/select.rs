//! Which files of a repository each local backend needs, picked from the repository's listing (online) or from
//! the cached snapshot (offline), and fetched through a [`Snapshot`].
//!
//! - `huggingface_local` ([`Want::HfFolder`]): `config.json`, `tokenizer.json`, `tokenizer_config.json`; when
//!   the repository has them, `generation_config.json`, `chat_template.jinja`, `special_tokens_map.json`; the
//!   weights as `model.safetensors`, else `model.safetensors.index.json` and every shard its `weight_map` names.
//! - `llamacpp` ([`Want::Gguf`]): the one file matching `filename`, the other parts of a split GGUF (by name, as
//!   llama.cpp finds them), and the one file matching each `additional_files` glob. Globs match the whole
//!   relative path with `fnmatch` semantics (`*` crosses `/`), as llama-cpp-python's `from_pretrained` does.

use std::collections::BTreeSet;

use glob::{MatchOptions, Pattern};
use serde_json::Value;

use super::cache::safe_relative;
use super::{HubError, Snapshot};

/// The files a backend needs from a repository.
#[derive(Clone, Copy, Debug)]
pub enum Want<'a> {
    /// A Hugging Face model folder for `huggingface_local`.
    HfFolder,
    /// A GGUF for `llamacpp`: the `filename` glob and the `additional_files` globs.
    Gguf { filename: &'a str, additional_files: &'a [String] },
}

/// Files `huggingface_local` cannot do without.
pub const HF_REQUIRED: [&str; 3] = ["config.json", "tokenizer.json", "tokenizer_config.json"];
/// Files `huggingface_local` reads when the repository has them.
pub const HF_OPTIONAL: [&str; 3] = ["generation_config.json", "chat_template.jinja", "special_tokens_map.json"];
const SINGLE_WEIGHTS: &str = "model.safetensors";
const WEIGHTS_INDEX: &str = "model.safetensors.index.json";

/// Fetches every file `want` names.
pub(super) fn fetch_wanted(snap: &Snapshot, want: &Want) -> Result<(), HubError> {
    match *want {
        Want::HfFolder => hf_folder(snap),
        Want::Gguf { filename, additional_files } => gguf(snap, filename, additional_files),
    }
}

/// Fetches a file the repository must have.
fn require(snap: &Snapshot, file: &str, needed_by: &str) -> Result<(), HubError> {
    if snap.has(file) {
        snap.fetch(file).map(drop)
    } else {
        Err(snap.not_cached(file).unwrap_or_else(|| HubError::NotInRepo {
            repo: snap.repo().into(),
            revision: snap.revision().into(),
            file: file.into(),
            needed_by: needed_by.into(),
        }))
    }
}

fn hf_folder(snap: &Snapshot) -> Result<(), HubError> {
    for file in HF_REQUIRED {
        require(snap, file, "huggingface_local")?;
    }
    for file in HF_OPTIONAL.into_iter().filter(|f| snap.has(f)) {
        snap.fetch(file)?;
    }
    if snap.has(SINGLE_WEIGHTS) {
        return snap.fetch(SINGLE_WEIGHTS).map(drop);
    }
    if !snap.has(WEIGHTS_INDEX) {
        return require(
            snap,
            "model.safetensors (or model.safetensors.index.json and its shards)",
            "huggingface_local, which reads safetensors weights only",
        );
    }
    let index = snap.fetch(WEIGHTS_INDEX)?;
    let invalid = |message: String| HubError::Invalid { repo: snap.repo().into(), path: index.clone(), message };
    let json = clem_core::hf::read_json(&index).map_err(|e| invalid(e.to_string()))?;
    let map = json.get("weight_map").and_then(Value::as_object).ok_or_else(|| invalid("no weight_map".into()))?;
    let shards: BTreeSet<&str> = map.values().filter_map(Value::as_str).collect();
    if shards.is_empty() {
        return Err(invalid("weight_map names no file".into()));
    }
    for shard in shards {
        if !safe_relative(shard) {
            return Err(invalid(format!("names shard {shard:?}, which is not a path inside the repository")));
        }
        require(snap, shard, WEIGHTS_INDEX)?;
    }
    Ok(())
}

fn gguf(snap: &Snapshot, filename: &str, additional_files: &[String]) -> Result<(), HubError> {
    let main = match_one(snap, "filename", filename)?;
    snap.fetch(&main)?;
    if let Some((prefix, _, count)) = split_name(&main) {
        let folder = main.rsplit_once('/').map_or(String::new(), |(dir, _)| format!("{dir}/"));
        for no in 2..=count {
            require(snap, &format!("{folder}{prefix}-{no:05}-of-{count:05}.gguf"), &format!("the split GGUF {main}"))?;
        }
    }
    for pattern in additional_files {
        let file = match_one(snap, "additional_files", pattern)?;
        snap.fetch(&file)?;
    }
    Ok(())
}

/// Why a glob did not pick exactly one file.
#[derive(Debug)]
pub enum GlobMiss {
    /// The pattern does not parse (the glob crate's message).
    Bad(String),
    None,
    Many(Vec<String>),
}

/// The one path in `files` that `pattern` matches with Python's `fnmatch` semantics (as huggingface_hub and
/// clemcore match `filename`): `*` crosses `/`, leading dots need no literal match, case matters.
pub fn fnmatch_one<'a>(files: &'a [String], pattern: &str) -> Result<&'a String, GlobMiss> {
    let pat = Pattern::new(pattern).map_err(|e| GlobMiss::Bad(e.msg.to_string()))?;
    let opts =
        MatchOptions { case_sensitive: true, require_literal_separator: false, require_literal_leading_dot: false };
    let matches: Vec<&String> = files.iter().filter(|f| pat.matches_with(f, opts)).collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(GlobMiss::None),
        many => Err(GlobMiss::Many(many.iter().map(|s| s.to_string()).collect())),
    }
}

/// The one listed file whose relative path matches `pattern`.
fn match_one(snap: &Snapshot, key: &'static str, pattern: &str) -> Result<String, HubError> {
    let repo = snap.repo().to_string();
    match fnmatch_one(snap.files(), pattern) {
        Ok(one) => Ok(one.clone()),
        Err(GlobMiss::Bad(message)) => Err(HubError::BadPattern { repo, key, pattern: pattern.into(), message }),
        Err(GlobMiss::None) => Err(snap
            .not_cached(&format!("a file matching {pattern:?} (model_config.{key})"))
            .unwrap_or_else(|| HubError::NoMatch {
                repo,
                key,
                pattern: pattern.into(),
                candidates: snap.files().iter().filter(|f| f.ends_with(".gguf")).cloned().collect(),
            })),
        Err(GlobMiss::Many(matches)) => Err(HubError::Ambiguous { repo, key, pattern: pattern.into(), matches }),
    }
}

/// `dir/name-00001-of-00003.gguf` -> (`name`, 1, 3): llama.cpp's split naming (`llama_split_prefix`).
pub fn split_name(path: impl AsRef<std::path::Path>) -> Option<(String, u32, u32)> {
    let name = path.as_ref().file_name()?.to_str()?;
    let stem = name.strip_suffix(".gguf")?;
    let (rest, count) = stem.rsplit_once("-of-")?;
    let (prefix, no) = rest.rsplit_once('-')?;
    if no.len() != 5 || count.len() != 5 {
        return None;
    }
    Some((prefix.to_string(), no.parse().ok()?, count.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_names() {
        assert_eq!(split_name("q/m-00001-of-00003.gguf"), Some(("m".into(), 1, 3)));
        assert_eq!(split_name("m.Q4_K_M.gguf"), None);
        assert_eq!(split_name("m-1-of-3.gguf"), None);
    }
}
