//! Crash-safe file writes, the lock of a results folder, finding files under a results folder, and
//! Python-compatible time stamps.
//!
//! Every results file is written to a temporary file in the same folder, flushed to disk, then renamed over
//! the target, and the folder is synced: a reader (or a run killed with SIGKILL) sees the old file or the
//! new one, never half of one. Temporary files are created exclusively under random names, so nothing another
//! user placed in the folder is written through. A run holds [`FolderLock`] on its folder (`flock`, which the
//! kernel releases when the process dies, however it dies).

use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

/// A results file that could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: invalid JSON: {message}", path.display())]
    Json { path: PathBuf, message: String },
    #[error(
        "{}: another clem run ({holder}) is writing this results folder; wait for it to end, or use another \
         results folder (-r)",
        dir.display()
    )]
    Locked { dir: PathBuf, holder: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FsError + '_ {
    move |source| FsError::Io { path: path.to_path_buf(), source }
}

/// Prefix of temporary files; a killed run may leave some behind, and they are removed when the instance is
/// redone.
pub const TEMP_PREFIX: &str = ".clem-tmp-";

/// Writes `bytes` to `path` atomically and durably (temp file + fsync + rename + folder fsync).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FsError> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io(dir))?;
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let suffix = format!("-{file_name}");
    let mut builder = tempfile::Builder::new();
    builder.prefix(TEMP_PREFIX).suffix(&suffix);
    #[cfg(unix)]
    {
        // Results are as readable as before (the umask still applies); tempfile's default is 0600.
        use std::os::unix::fs::PermissionsExt as _;
        builder.permissions(fs::Permissions::from_mode(0o644));
    }
    // Dropped on any error below, the temporary file is removed.
    let mut tmp = builder.tempfile_in(dir).map_err(io(dir))?;
    tmp.write_all(bytes).map_err(io(tmp.path()))?;
    tmp.as_file().sync_all().map_err(io(tmp.path()))?;
    tmp.persist(path).map_err(|e| FsError::Io { path: path.to_path_buf(), source: e.error })?;
    // The rename is durable only once the folder entry is on disk.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The lock file a run keeps in its folder while it writes there (removed when the run ends).
pub const LOCK_FILE: &str = ".clem-run.lock";

/// An exclusive lock on a results folder, holding the process id for others' messages. Dropping it removes
/// the lock file and releases the lock; a killed process's lock is released by the kernel (its file stays,
/// and the next run takes it over).
#[derive(Debug)]
pub struct FolderLock {
    path: PathBuf,
    _file: File,
}

impl FolderLock {
    /// Locks `dir` (created if needed), or says which process holds it.
    pub fn acquire(dir: &Path) -> Result<FolderLock, FsError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join(LOCK_FILE);
        // A run that ends removes the lock file: a file opened just before that is no longer the lock, so
        // lock whatever the path names now.
        for _ in 0..100 {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io(&path))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(fs::TryLockError::WouldBlock) => {
                    let mut text = String::new();
                    let _ = (&file).take(64).read_to_string(&mut text);
                    let pid: String = text.trim().chars().filter(char::is_ascii_digit).take(20).collect();
                    let holder = if pid.is_empty() { "pid unknown".into() } else { format!("pid {pid}") };
                    return Err(FsError::Locked { dir: dir.to_path_buf(), holder });
                }
                Err(fs::TryLockError::Error(e)) => return Err(io(&path)(e)),
            }
            if !same_file(&file, &path) {
                continue;
            }
            file.set_len(0).map_err(io(&path))?;
            file.write_all(format!("{}\n", std::process::id()).as_bytes()).map_err(io(&path))?;
            return Ok(FolderLock { path, _file: file });
        }
        Err(FsError::Locked { dir: dir.to_path_buf(), holder: "its lock file keeps being replaced".into() })
    }
}

impl Drop for FolderLock {
    fn drop(&mut self) {
        // Removed while still held, so no other run is between its lock and this removal.
        let _ = fs::remove_file(&self.path);
    }
}

/// Whether the open `file` is the one `path` names now.
#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_: &File, _: &Path) -> bool {
    true
}

/// Whether a name can be one folder or file name under a results folder: not empty, not `.` or `..`, without
/// `/`, `\` or NUL (model and experiment names become folders).
pub fn is_plain_segment(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

/// Writes JSON as clemcore's `store_json` does (UTF-8, non-ASCII kept; indented for reading) atomically.
pub fn write_json(path: &Path, value: &Value) -> Result<(), FsError> {
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|e| FsError::Json { path: path.to_path_buf(), message: e.to_string() })?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

/// Reads a JSON file.
pub fn read_json(path: &Path) -> Result<Value, FsError> {
    let text = fs::read_to_string(path).map_err(io(path))?;
    serde_json::from_str(&text).map_err(|e| FsError::Json { path: path.to_path_buf(), message: e.to_string() })
}

/// `datetime.now().isoformat()` in Python: `2024-05-01T12:00:00.123456`, no fraction when it is zero, no zone.
pub fn isoformat(t: &chrono::DateTime<chrono::Local>) -> String {
    let micros = t.timestamp_subsec_micros() % 1_000_000;
    if micros == 0 {
        t.format("%Y-%m-%dT%H:%M:%S").to_string()
    } else {
        format!("{}.{micros:06}", t.format("%Y-%m-%dT%H:%M:%S"))
    }
}

/// The current local time as Python's isoformat.
pub fn now_iso() -> String {
    isoformat(&chrono::Local::now())
}

/// Every file named `name` under `root` (symlinked folders are not followed), sorted.
pub fn files_named(root: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            } else if e.file_name() == name {
                found.push(e.path());
            }
        }
    }
    found.sort();
    found
}

/// Folders under `root` holding `interactions.json` (one per recorded episode), sorted.
pub fn episode_dirs(root: &Path) -> Vec<PathBuf> {
    files_named(root, "interactions.json").into_iter().filter_map(|f| f.parent().map(Path::to_path_buf)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn isoformat_matches_python() {
        let t = chrono::Local.with_ymd_and_hms(2024, 5, 1, 12, 0, 3).single().expect("valid time");
        assert_eq!(isoformat(&t), "2024-05-01T12:00:03");
        let t = t + chrono::Duration::microseconds(1500);
        assert_eq!(isoformat(&t), "2024-05-01T12:00:03.001500");
    }

    /// Before: the temporary file had a fixed name (`.clem-tmp-PID-x.json`) opened with O_CREAT|O_TRUNC, so a
    /// link placed there by another user was written through.
    #[cfg(unix)]
    #[test]
    fn temp_files_are_never_written_through() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "untouched").expect("write");
        let target = dir.path().join("x.json");
        let fixed = dir.path().join(format!("{TEMP_PREFIX}{}-x.json", std::process::id()));
        std::os::unix::fs::symlink(&victim, &fixed).expect("symlink");
        write_json(&target, &serde_json::json!({"k": 1})).expect("writes");
        assert_eq!(std::fs::read_to_string(&victim).expect("read"), "untouched");
        assert_eq!(read_json(&target).expect("reads"), serde_json::json!({"k": 1}));
    }

    #[test]
    fn a_locked_folder_names_its_holder_and_is_free_once_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = dir.path().join("run");
        let held = FolderLock::acquire(&run).expect("first");
        let text = std::fs::read_to_string(run.join(LOCK_FILE)).expect("lock file");
        assert_eq!(text.trim(), std::process::id().to_string());
        // flock locks belong to an open file, so a second open in this process is refused like another process.
        let e = FolderLock::acquire(&run).expect_err("second").to_string();
        assert!(e.contains(&format!("another clem run (pid {})", std::process::id())), "{e}");
        drop(held);
        assert!(!run.join(LOCK_FILE).exists(), "removed when the run ends");
        // A lock file left by a killed run (no lock held on it) is taken over.
        std::fs::write(run.join(LOCK_FILE), "999999\n").expect("stale");
        let again = FolderLock::acquire(&run).expect("stale file, no holder");
        drop(again);
    }

    #[test]
    fn plain_segments() {
        for ok in ["mock", "gpt-4o", "a..b", ".hidden", "x y"] {
            assert!(is_plain_segment(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a\\b", "a\0b", "/"] {
            assert!(!is_plain_segment(bad), "{bad:?}");
        }
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a/b/x.json");
        write_json(&p, &serde_json::json!({"k": "ü"})).expect("writes");
        write_json(&p, &serde_json::json!({"k": 2})).expect("overwrites");
        assert_eq!(read_json(&p).expect("reads"), serde_json::json!({"k": 2}));
        let names: Vec<_> = fs::read_dir(p.parent().expect("parent")).expect("ls").flatten().collect();
        assert_eq!(names.len(), 1, "no temp file left");
    }
}
