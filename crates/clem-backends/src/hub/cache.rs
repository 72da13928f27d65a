//! The hub cache on disk, in huggingface_hub's exact layout, so that either program finds what the other cached:
//!
//! ```text
//! {cache}/models--ORG--NAME/blobs/<etag>                     the file's bytes, named by its ETag
//! {cache}/models--ORG--NAME/snapshots/<commit>/<path>        relative symlink to ../../blobs/<etag> (one more
//!                                                            `..` per folder in <path>)
//! {cache}/models--ORG--NAME/refs/<revision>                  the commit sha, no newline
//! {cache}/.locks/models--ORG--NAME/<etag>.lock               held while the blob is being downloaded
//! {cache}/CACHEDIR.TAG                                       tells backup tools to skip the cache
//! ```
//!
//! Names that come from a server (file paths, ETags, commits) are checked before they become paths.

use std::path::{Path, PathBuf};

use super::HubError;

/// `models--org--name`: the cache folder name of a model repository.
pub fn repo_folder_name(repo_id: &str) -> String {
    format!("models--{}", repo_id.replace('/', "--"))
}

/// A repository id as huggingface_hub accepts it: `name` or `org/name`, of letters, digits, `-`, `_` and `.`,
/// without `--` or `..`, not starting or ending with `-` or `.`, at most 96 characters.
pub fn valid_repo_id(id: &str) -> bool {
    let parts: Vec<&str> = id.split('/').collect();
    id.len() <= 96
        && parts.len() <= 2
        && !id.contains("--")
        && !id.contains("..")
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && !p.starts_with(['-', '.'])
                && !p.ends_with(['-', '.'])
        })
}

/// A `/`-separated relative path that stays inside its folder (no `..`, no empty or absolute parts).
pub fn safe_relative(path: &str) -> bool {
    !path.is_empty()
        && !path.contains('\\')
        && !path.contains('\0')
        && path.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// A single path component a server may name (an ETag or a commit): no separators, not `.` or `..`.
pub fn safe_name(name: &str) -> bool {
    safe_relative(name) && !name.contains('/') && name.len() <= 255
}

/// huggingface_hub's cache directory tag (<https://bford.info/cachedir/>), byte for byte.
pub const CACHEDIR_TAG: &str = "Signature: 8a477f597d28d172789f06886806bc55\n\
                                # This file is a cache directory tag created by huggingface_hub.\n\
                                # For information about cache directory tags, see:\n\
                                #\thttps://bford.info/cachedir/\n";

/// Writes `CACHEDIR.TAG` into the cache when it has none, as huggingface_hub does before a download; a cache that
/// cannot take it (read-only) is left alone.
pub fn tag_cache_dir(cache: &Path) {
    let tag = cache.join("CACHEDIR.TAG");
    if std::fs::symlink_metadata(&tag).is_err() && std::fs::create_dir_all(cache).is_ok() {
        let _ = std::fs::write(tag, CACHEDIR_TAG);
    }
}

/// The folders and files of one repository in a cache.
#[derive(Clone, Debug)]
pub struct Layout {
    pub repo_id: String,
    pub cache: PathBuf,
    pub repo_dir: PathBuf,
    pub folder_name: String,
}

impl Layout {
    pub fn new(cache: &Path, repo_id: &str) -> Layout {
        let folder_name = repo_folder_name(repo_id);
        Layout { repo_id: repo_id.into(), cache: cache.into(), repo_dir: cache.join(&folder_name), folder_name }
    }

    pub fn blob(&self, etag: &str) -> PathBuf {
        self.repo_dir.join("blobs").join(etag)
    }

    pub fn snapshot(&self, commit: &str) -> PathBuf {
        self.repo_dir.join("snapshots").join(commit)
    }

    pub fn pointer(&self, commit: &str, file: &str) -> PathBuf {
        file.split('/').fold(self.snapshot(commit), |p, c| p.join(c))
    }

    pub fn lock(&self, etag: &str) -> PathBuf {
        self.cache.join(".locks").join(&self.folder_name).join(format!("{etag}.lock"))
    }

    fn ref_path(&self, revision: &str) -> PathBuf {
        revision.split('/').fold(self.repo_dir.join("refs"), |p, c| p.join(c))
    }

    /// The commit a revision names in this cache: `refs/<revision>`, else the revision itself when a snapshot of
    /// that name exists; for `main` without refs, the newest snapshot (a folder copied by hand).
    pub fn cached_commit(&self, revision: &str) -> Option<String> {
        if safe_relative(revision) {
            if let Ok(text) = std::fs::read_to_string(self.ref_path(revision)) {
                let commit = text.trim();
                if safe_name(commit) && self.snapshot(commit).is_dir() {
                    return Some(commit.to_string());
                }
            }
        }
        if safe_name(revision) && self.snapshot(revision).is_dir() {
            return Some(revision.to_string());
        }
        if revision == "main" {
            let snapshot = clem_core::hf::cached_snapshot(&self.cache, &self.repo_id)?;
            return snapshot.file_name().map(|n| n.to_string_lossy().into_owned());
        }
        None
    }

    /// Writes `refs/<revision>` (when the revision is not the commit itself), atomically.
    pub fn write_ref(&self, revision: &str, commit: &str) -> Result<(), HubError> {
        if revision == commit {
            return Ok(());
        }
        let path = self.ref_path(revision);
        if std::fs::read_to_string(&path).is_ok_and(|t| t == commit) {
            return Ok(());
        }
        let dir = path.parent().unwrap_or(&self.repo_dir);
        std::fs::create_dir_all(dir).map_err(|e| HubError::io(dir, e))?;
        let tmp = dir.join(format!(".{}.{:016x}.tmp", file_name(&path), fastrand::u64(..)));
        // Created exclusively (a random name another user cannot have prepared, and no link is followed).
        let mut file =
            std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(|e| HubError::io(&tmp, e))?;
        if let Err(e) = std::io::Write::write_all(&mut file, commit.as_bytes()) {
            let _ = std::fs::remove_file(&tmp);
            return Err(HubError::io(&tmp, e));
        }
        std::fs::rename(&tmp, &path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            HubError::io(&path, e)
        })
    }

    /// Points `snapshots/<commit>/<file>` at `blobs/<etag>` with a relative symlink, replacing whatever was there
    /// (a dangling link left by a deleted blob, say).
    pub fn link(&self, commit: &str, file: &str, etag: &str) -> Result<PathBuf, HubError> {
        let pointer = self.pointer(commit, file);
        let dir = pointer.parent().unwrap_or(&self.repo_dir);
        std::fs::create_dir_all(dir).map_err(|e| HubError::io(dir, e))?;
        if std::fs::symlink_metadata(&pointer).is_ok() {
            std::fs::remove_file(&pointer).map_err(|e| HubError::io(&pointer, e))?;
        }
        let target = relative_blob_target(file, etag);
        match make_link(&target, &self.blob(etag), &pointer) {
            Ok(()) => Ok(pointer),
            // Another process linked it first.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && pointer.is_file() => Ok(pointer),
            Err(e) => Err(HubError::io(&pointer, e)),
        }
    }
}

/// `../../blobs/<etag>`, with one more `..` per folder in `file`.
pub fn relative_blob_target(file: &str, etag: &str) -> PathBuf {
    let ups = file.split('/').count() + 1;
    let mut target = PathBuf::new();
    for _ in 0..ups {
        target.push("..");
    }
    target.join("blobs").join(etag)
}

#[cfg(unix)]
fn make_link(target: &Path, _blob: &Path, pointer: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, pointer)
}

/// Without symlinks, huggingface_hub copies the blob into the snapshot; so do we.
#[cfg(not(unix))]
fn make_link(_target: &Path, blob: &Path, pointer: &Path) -> std::io::Result<()> {
    std::fs::copy(blob, pointer).map(|_| ())
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Folders deeper than this in a snapshot are not listed (a model repository is shallow).
const MAX_DEPTH: usize = 8;

/// The files of a snapshot folder (following its symlinks; dangling ones are not files), as sorted
/// `/`-separated relative paths.
pub fn list_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new(), 0usize)];
    while let Some((path, rel, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let child_rel = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            let Ok(meta) = std::fs::metadata(entry.path()) else { continue };
            if meta.is_dir() && depth < MAX_DEPTH {
                stack.push((entry.path(), child_rel, depth + 1));
            } else if meta.is_file() {
                out.push(child_rel);
            }
        }
    }
    out.sort();
    out
}

/// An exclusive lock on a blob's lock file (as huggingface_hub's `filelock`: `flock` on Unix), released on drop.
pub struct BlobLock {
    _file: std::fs::File,
}

impl BlobLock {
    /// Waits for the lock; `on_wait` runs once if another process holds it.
    pub fn acquire(path: &Path, on_wait: impl FnOnce()) -> Result<BlobLock, HubError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| HubError::io(dir, e))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| HubError::io(path, e))?;
        lock_file(&file, on_wait).map_err(|e| HubError::io(path, e))?;
        Ok(BlobLock { _file: file })
    }
}

#[cfg(unix)]
fn lock_file(file: &std::fs::File, on_wait: impl FnOnce()) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: flock on a file descriptor this function borrows; no memory is involved.
    if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
        return Err(err);
    }
    on_wait();
    loop {
        // SAFETY: as above; the lock is released when the file is closed.
        if unsafe { libc::flock(fd, libc::LOCK_EX) } == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

#[cfg(not(unix))]
fn lock_file(_file: &std::fs::File, _on_wait: impl FnOnce()) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths() {
        assert_eq!(repo_folder_name("org/name"), "models--org--name");
        assert!(valid_repo_id("HuggingFaceTB/SmolLM2-135M-Instruct"));
        assert!(valid_repo_id("gpt2"));
        for bad in ["/abs/path", "./dir", "a/b/c", "a--b/c", "a/..", "a/.b", "", "a/b c", "a/-b"] {
            assert!(!valid_repo_id(bad), "{bad}");
        }
        assert!(safe_relative("a/b.gguf"));
        for bad in ["", "/a", "a//b", "../a", "a/./b", "a\\b"] {
            assert!(!safe_relative(bad), "{bad}");
        }
        assert!(!safe_name("a/b"));
        assert_eq!(relative_blob_target("config.json", "e1"), Path::new("../../blobs/e1"));
        assert_eq!(relative_blob_target("q/m.gguf", "e2"), Path::new("../../../blobs/e2"));
    }

    #[cfg(unix)]
    #[test]
    fn links_refs_and_listing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(tmp.path(), "org/m");
        std::fs::create_dir_all(layout.repo_dir.join("blobs")).expect("mkdir");
        std::fs::write(layout.blob("e1"), "x").expect("write");
        let p = layout.link("c0", "sub/f.txt", "e1").expect("links");
        assert_eq!(std::fs::read_link(&p).expect("link"), Path::new("../../../blobs/e1"));
        assert_eq!(std::fs::read_to_string(&p).expect("reads"), "x");
        // Relinking replaces, dangling links are not listed.
        layout.link("c0", "sub/f.txt", "e1").expect("relinks");
        layout.link("c0", "gone.txt", "e-missing").expect("links");
        assert_eq!(list_files(&layout.snapshot("c0")), vec!["sub/f.txt"]);
        assert_eq!(layout.cached_commit("main"), Some("c0".into()), "newest snapshot without refs");
        layout.write_ref("main", "c0").expect("ref");
        assert_eq!(std::fs::read_to_string(layout.repo_dir.join("refs/main")).expect("ref"), "c0");
        layout.write_ref("refs/pr/1", "c0").expect("nested ref");
        assert_eq!(layout.cached_commit("refs/pr/1"), Some("c0".into()));
        assert_eq!(layout.cached_commit("c0"), Some("c0".into()));
        assert_eq!(layout.cached_commit("v2"), None);
        let _lock = BlobLock::acquire(&layout.lock("e1"), || {}).expect("locks");
        assert!(tmp.path().join(".locks/models--org--m/e1.lock").is_file());
    }
}
