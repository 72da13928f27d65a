//! Crash-safe file writes and Python-compatible time stamps.
//!
//! Every results file is written to a temporary file in the same folder, flushed to disk, then renamed over
//! the target, and the folder is synced: a reader (or a run killed with SIGKILL) sees the old file or the
//! new one, never half of one.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// A results file that could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: invalid JSON: {message}", path.display())]
    Json { path: PathBuf, message: String },
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
    let tmp = dir.join(format!("{TEMP_PREFIX}{}-{file_name}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        fs::rename(&tmp, path).map_err(io(path))?;
        // The rename is durable only once the folder entry is on disk.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
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
