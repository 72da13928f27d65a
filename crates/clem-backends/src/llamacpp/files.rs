//! Finding a llamacpp entry's GGUF on disk, and checking that it fits in memory before loading it.
//!
//! `huggingface_id` names a local folder or a model on the Hugging Face hub, downloaded into (or found in) the hub
//! cache by [`crate::hub`]; `filename` is a glob inside that folder (matched against the path relative to it, `*`
//! crossing `/` as Python's `fnmatch` does, so `*Q4_1.gguf` finds `sub/x.Q4_1.gguf`); `additional_files` are globs
//! for the other parts of a split GGUF. A missing file is an error that says what is missing and where it was
//! looked for.

use std::path::{Path, PathBuf};

use crate::hub::GlobMiss;

/// Folders deeper than this under a model folder are not searched (a model repository is shallow).
const MAX_DEPTH: usize = 6;

/// A file or folder that cannot be found or used.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error(transparent)]
    Hf(#[from] clem_core::hf::HfError),
    #[error(transparent)]
    Hub(#[from] crate::hub::HubError),
    #[error("model_config.{key}: {pattern:?} is not a valid glob: {message}")]
    BadPattern { key: &'static str, pattern: String, message: String },
    #[error("model_config.{key}: no file matches {pattern:?} in {}{}", dir.display(), found_hint(found))]
    NoMatch { key: &'static str, pattern: String, dir: PathBuf, found: Vec<String> },
    #[error("model_config.{key}: {pattern:?} matches {} files in {}: {}; make the pattern name one", matches.len(), dir.display(), matches.join(", "))]
    Ambiguous { key: &'static str, pattern: String, dir: PathBuf, matches: Vec<String> },
    #[error(
        "{} is part 1 of a split GGUF of {count} parts, but part {missing} ({}) is missing{}",
        main.display(), expected.display(),
        if *listed { "" } else { "; list the other parts in model_config.additional_files" }
    )]
    MissingPart { main: PathBuf, count: u32, missing: u32, expected: PathBuf, listed: bool },
    #[error(
        "model_config.additional_files: {} is not a part of {} (llama.cpp loads the parts of a split GGUF by their \
         names: {})", file.display(), main.display(), expected.join(", ")
    )]
    NotAPart { file: PathBuf, main: PathBuf, expected: Vec<String> },
    #[error("{}: cannot read: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

fn found_hint(found: &[String]) -> String {
    match found.len() {
        0 => " (it holds no .gguf file)".into(),
        _ => format!(" (.gguf files there: {})", found.join(", ")),
    }
}

/// The GGUF files of one model: the file llama.cpp opens, and every file it will read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufFiles {
    pub main: PathBuf,
    /// The other parts of a split GGUF, in part order.
    pub parts: Vec<PathBuf>,
    /// The size of all files together, in bytes.
    pub total_bytes: u64,
}

/// Resolves `huggingface_id` to a folder: a local folder as given, else the hub snapshot holding the files
/// `filename` and `additional_files` name (downloaded when missing and the hub is reachable).
pub fn model_dir(
    huggingface_id: &str,
    filename: &str,
    additional_files: &[String],
    token: Option<clem_core::keys::Secret>,
) -> Result<PathBuf, FilesError> {
    Ok(crate::hub::model_dir(huggingface_id, &crate::hub::Want::Gguf { filename, additional_files }, token)?)
}

/// Finds the GGUF named by `filename` (and `additional_files`) in `dir`, and checks that every part of a split
/// GGUF is present. A split GGUF is known by its name (`x-00001-of-00003.gguf`), as llama.cpp finds the other
/// parts by name too.
pub fn resolve_in(dir: &Path, filename: &str, additional_files: &[String]) -> Result<GgufFiles, FilesError> {
    let files = list_files(dir)?;
    let main = match_one(dir, &files, "filename", filename)?;
    let mut listed = Vec::new();
    for pattern in additional_files {
        listed.push(match_one(dir, &files, "additional_files", pattern)?);
    }
    let mut parts = Vec::new();
    let count = split_name(&main).map_or(1, |(_, _, n)| n);
    if count > 1 {
        let expected: Vec<PathBuf> = (2..=count).filter_map(|i| part_path(&main, i, count)).collect();
        for file in &listed {
            if !expected.contains(file) && file != &main {
                return Err(FilesError::NotAPart {
                    file: file.clone(),
                    main: main.clone(),
                    expected: expected.iter().map(|p| file_name(p)).collect(),
                });
            }
        }
        for (i, part) in (2..).zip(&expected) {
            if !part.is_file() {
                return Err(FilesError::MissingPart {
                    main: main.clone(),
                    count,
                    missing: i,
                    expected: part.clone(),
                    listed: !listed.is_empty(),
                });
            }
        }
        parts = expected;
    } else {
        // Not a split GGUF: the listed files are still required to exist (checked above) and counted.
        parts.extend(listed.into_iter().filter(|p| p != &main));
    }
    let mut total_bytes = 0;
    for path in std::iter::once(&main).chain(&parts) {
        let meta = std::fs::metadata(path).map_err(|source| FilesError::Io { path: path.clone(), source })?;
        total_bytes += meta.len();
    }
    Ok(GgufFiles { main, parts, total_bytes })
}

/// `name-00001-of-00003.gguf` -> (`name`, 1, 3): llama.cpp's split naming.
pub use crate::hub::split_name;

/// The path of part `no` of `count` next to the first part, as llama.cpp's `llama_split_path` names it.
fn part_path(main: &Path, no: u32, count: u32) -> Option<PathBuf> {
    let (prefix, _, _) = split_name(main)?;
    Some(main.with_file_name(format!("{prefix}-{no:05}-of-{count:05}.gguf")))
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The one file under `dir` whose relative path matches `pattern`.
fn match_one(dir: &Path, files: &[String], key: &'static str, pattern: &str) -> Result<PathBuf, FilesError> {
    match crate::hub::fnmatch_one(files, pattern) {
        Ok(one) => Ok(dir.join(one)),
        Err(GlobMiss::Bad(message)) => Err(FilesError::BadPattern { key, pattern: pattern.into(), message }),
        Err(GlobMiss::None) => Err(FilesError::NoMatch {
            key,
            pattern: pattern.into(),
            dir: dir.into(),
            found: files.iter().filter(|f| f.ends_with(".gguf")).cloned().collect(),
        }),
        Err(GlobMiss::Many(matches)) => {
            Err(FilesError::Ambiguous { key, pattern: pattern.into(), dir: dir.into(), matches })
        }
    }
}

/// Every file under `dir` (following symbolic links, as the hub cache's snapshots are links), as `/`-separated
/// paths relative to it, sorted.
fn list_files(dir: &Path) -> Result<Vec<String>, FilesError> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new(), 0usize)];
    while let Some((path, rel, depth)) = stack.pop() {
        let entries = std::fs::read_dir(&path).map_err(|source| FilesError::Io { path: path.clone(), source })?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let child_rel = if rel.is_empty() { name } else { format!("{rel}/{}", name) };
            let child = entry.path();
            // metadata() follows links; a dangling link is skipped.
            let Ok(meta) = std::fs::metadata(&child) else { continue };
            if meta.is_dir() {
                if depth < MAX_DEPTH {
                    stack.push((child, child_rel, depth + 1));
                }
            } else if meta.is_file() {
                out.push(child_rel);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The model would not fit in memory.
#[derive(Debug, thiserror::Error)]
#[error(
    "{model}: loading needs about {} MiB (weights {} MiB + KV cache {} MiB for {n_ctx} tokens of context + \
     {} MiB working memory) but only {} MiB are available (MemAvailable in /proc/meminfo); free memory, lower \
     model_config.context_size, or pick a smaller quantisation",
    mib(self.needed()), mib(*weights), mib(*kv_cache), mib(*overhead), mib(*available)
)]
pub struct MemoryError {
    pub model: String,
    pub weights: u64,
    pub kv_cache: u64,
    pub overhead: u64,
    pub n_ctx: u64,
    pub available: u64,
}

impl MemoryError {
    pub fn needed(&self) -> u64 {
        self.weights + self.kv_cache + self.overhead
    }
}

use crate::memory::mib;

/// Fails when weights + KV cache + working memory exceed `available` (when known).
pub fn check_memory(
    model: &str,
    weights: u64,
    kv_cache: u64,
    n_ctx: u64,
    available: Option<u64>,
) -> Result<(), MemoryError> {
    let Some(available) = available else { return Ok(()) };
    // Compute buffers and llama.cpp's own bookkeeping: a fixed allowance plus a share of the weights.
    let overhead = (64 << 20) + weights / 20;
    let err = MemoryError { model: model.into(), weights, kv_cache, overhead, n_ctx, available };
    if err.needed() > available {
        Err(err)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path, bytes: usize) {
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(p, vec![0u8; bytes]).expect("write");
    }

    #[test]
    fn glob_crosses_folders_and_must_match_one() {
        let tmp = tempfile::tempdir().expect("tempdir");
        touch(&tmp.path().join("sub/m.Q4_1.gguf"), 10);
        touch(&tmp.path().join("m.Q8_0.gguf"), 20);
        let f = resolve_in(tmp.path(), "*Q4_1.gguf", &[]).expect("resolves");
        assert_eq!(f.main, tmp.path().join("sub/m.Q4_1.gguf"));
        assert_eq!(f.total_bytes, 10);
        let e = resolve_in(tmp.path(), "*.gguf", &[]).expect_err("two match");
        assert!(e.to_string().contains("matches 2 files"), "{e}");
        let e = resolve_in(tmp.path(), "*Q5*.gguf", &[]).expect_err("none match");
        assert!(e.to_string().contains("m.Q8_0.gguf"), "{e}");
        let e = resolve_in(tmp.path(), "[", &[]).expect_err("bad glob");
        assert!(e.to_string().contains("not a valid glob"), "{e}");
    }

    #[test]
    fn split_parts_are_checked_by_name() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let d = tmp.path();
        touch(&d.join("m-00001-of-00003.gguf"), 1);
        touch(&d.join("m-00002-of-00003.gguf"), 2);
        let extra = vec!["m-00002-of-00003.gguf".to_string(), "m-00003-of-00003.gguf".to_string()];
        let e = resolve_in(d, "m-00001-of-00003.gguf", &extra).expect_err("part 3 missing");
        assert!(e.to_string().contains("m-00003-of-00003.gguf"), "{e}");
        // Not listed at all: the missing part is still found missing, by name.
        let e = resolve_in(d, "m-00001-*.gguf", &[]).expect_err("part 3 missing");
        assert!(e.to_string().contains("part 3") && e.to_string().contains("additional_files"), "{e}");
        touch(&d.join("m-00003-of-00003.gguf"), 3);
        let f = resolve_in(d, "m-00001-*.gguf", &extra).expect("resolves");
        assert_eq!(f.parts.len(), 2);
        assert_eq!(f.total_bytes, 6);
        touch(&d.join("other.gguf"), 1);
        let e = resolve_in(d, "m-00001-*.gguf", &["other.gguf".into()]).expect_err("not a part");
        assert!(e.to_string().contains("not a part"), "{e}");
    }

    #[test]
    fn memory_check() {
        assert!(check_memory("m", 100 << 20, 10 << 20, 4096, Some(1 << 30)).is_ok());
        assert!(check_memory("m", 100 << 20, 10 << 20, 4096, None).is_ok());
        let e = check_memory("m", 900 << 20, 200 << 20, 4096, Some(1 << 30)).expect_err("too big");
        let msg = e.to_string();
        assert!(msg.contains("1024 MiB are available") && msg.contains("context_size"), "{msg}");
    }
}
