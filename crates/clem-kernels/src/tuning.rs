//! The two settings of the packed products that depend on the machine, measured on it rather than fixed for one
//! CPU: how far ahead one row streaming a matrix (decoding) prefetches, and how many bytes of a panel a block of
//! several rows covers (the slice kept in L1 while the rows pass).
//!
//! [`calibrate`] picks each among a few candidates with a micro-benchmark on one thread (about a second: one row
//! streaming bf16 matrices twice the last-level cache, clamped to 64-256 MiB, and eight rows over 32 MiB of them,
//! each candidate's fastest of 7 passes taken in turns), once
//! per CPU model and path: the result is cached in `<user cache>/clemrs/kernels-<cpu>.json` (`~/.cache` on Linux)
//! and installed for the process. A candidate replaces the default only when it is at least 3% faster, so noise
//! keeps today's constants. `CLEM_KERNELS_TUNING=default` skips the measurement and the cache, `=measure` measures
//! anew (and rewrites the cache). Until a path is calibrated, [`get`] gives [`Tuning::DEFAULT`]. No setting
//! changes any result: only the order memory is fetched in.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

use half::bf16;
use serde_json::{json, Value};

use crate::dispatch::{cpu_model, Features, Path};
use crate::{KernelError, Packed, PackedMatrix, Result};

/// The environment variable that skips (`default`) or forces (`measure`) the calibration.
pub const ENV: &str = "CLEM_KERNELS_TUNING";

/// Bumped when the candidates or the benchmark change: older cache entries are measured again.
const VERSION: u64 = 1;

/// Machine-dependent settings of the packed products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tuning {
    /// Bytes of a panel one block of several rows covers.
    pub block_bytes: usize,
    /// Bytes ahead of its reads that one row streaming a matrix prefetches (0: none, the hardware prefetcher's job).
    pub row_ahead: usize,
}

impl Tuning {
    /// The constants the AVX2 kernels were tuned with (on an AMD EPYC): 16 KiB blocks, no software prefetch for
    /// one row.
    pub const DEFAULT: Tuning = Tuning { block_bytes: 16 << 10, row_ahead: 0 };
    /// The candidates [`calibrate`] measures.
    pub const BLOCKS: [usize; 3] = [8 << 10, 16 << 10, 32 << 10];
    pub const AHEADS: [usize; 4] = [0, 1 << 10, 4 << 10, 16 << 10];

    /// Inputs per block when each input takes `bytes_per_input` bytes of a panel.
    pub(crate) fn block_inputs(self, bytes_per_input: usize) -> usize {
        (self.block_bytes / bytes_per_input.max(1)).max(1)
    }

    /// What one row prefetches while it reads the `panel_len` values at the start of `data` (the panels that
    /// follow are in `data` too): as many values, [`Tuning::row_ahead`] bytes on; empty when that is 0.
    pub(crate) fn stream_ahead<W>(self, data: &[W], panel_len: usize) -> &[W] {
        if self.row_ahead == 0 {
            return &[];
        }
        let from = (self.row_ahead / std::mem::size_of::<W>().max(1)).min(data.len());
        &data[from..from.saturating_add(panel_len).min(data.len())]
    }
}

fn slot(path: Path) -> &'static OnceLock<Tuning> {
    static TUNED: [OnceLock<Tuning>; 4] = [const { OnceLock::new() }; 4];
    &TUNED[path as usize]
}

/// The tuning `path`'s products run with: calibrated if [`calibrate`] ran for it, else [`Tuning::DEFAULT`].
pub fn get(path: Path) -> Tuning {
    slot(path).get().copied().unwrap_or(Tuning::DEFAULT)
}

/// A path's tuning and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Calibration {
    pub tuning: Tuning,
    /// "default (CLEM_KERNELS_TUNING=default)", "cached in FILE", "measured, saved to FILE", ...
    pub source: String,
}

/// The tuning of `path` on this machine (see the module doc), installed for the process; the first call per
/// path decides. Errors only when the path cannot run here or `CLEM_KERNELS_TUNING` holds another value; a cache
/// that cannot be read or written is measured around (and said so in [`Calibration::source`]).
pub fn calibrate(path: Path) -> Result<Calibration> {
    static RESULTS: [OnceLock<Calibration>; 4] = [const { OnceLock::new() }; 4];
    let path = path.check()?;
    let mode = std::env::var(ENV).unwrap_or_default();
    let mode = mode.trim().to_ascii_lowercase();
    if !matches!(mode.as_str(), "" | "default" | "measure") {
        return Err(KernelError::BadTuning { value: mode });
    }
    let result = RESULTS[path as usize].get_or_init(|| {
        let calibration = match mode.as_str() {
            "default" => Calibration { tuning: Tuning::DEFAULT, source: format!("default ({ENV}=default)") },
            _ => cached_or_measured(path, cache_file(), mode == "measure", stream_bytes()),
        };
        let _ = slot(path).set(calibration.tuning);
        calibration
    });
    Ok(result.clone())
}

/// The tuning of `path` cached for this CPU and the file, without measuring anything (`None`: the first load
/// measures it).
pub fn cached(path: Path) -> Option<(Tuning, PathBuf)> {
    let file = cache_file()?;
    let doc = serde_json::from_str::<Value>(&std::fs::read_to_string(&file).ok()?).ok()?;
    Some((entry(&doc, path)?, file))
}

/// `<user cache>/clemrs/kernels-<cpu model, lowercase, runs of other characters as one '-'>.json`.
pub fn cache_file() -> Option<PathBuf> {
    Some(dirs::cache_dir()?.join("clemrs").join(format!("kernels-{}.json", slug(&cpu_model()))))
}

fn slug(model: &str) -> String {
    let mut out = String::new();
    for c in model.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    let out = out.trim_end_matches('-');
    if out.is_empty() {
        "unknown".into()
    } else {
        out.into()
    }
}

/// The entry for `path` in the cache `file` (unless `fresh`), else measured over `stream_bytes` and written there.
fn cached_or_measured(path: Path, file: Option<PathBuf>, fresh: bool, stream_bytes: usize) -> Calibration {
    if path == Path::Portable {
        return Calibration { tuning: Tuning::DEFAULT, source: "default (the portable path is not calibrated)".into() };
    }
    let Some(file) = file else {
        let (tuning, _) = measure(path, stream_bytes);
        return Calibration { tuning, source: "measured (no cache folder to save it in)".into() };
    };
    let doc = std::fs::read_to_string(&file).ok().and_then(|t| serde_json::from_str::<Value>(&t).ok());
    if let (false, Some(tuning)) = (fresh, doc.as_ref().and_then(|d| entry(d, path))) {
        return Calibration { tuning, source: format!("cached in {}", file.display()) };
    }
    let (tuning, measured) = measure(path, stream_bytes);
    let mut doc = match doc {
        Some(d) if d.is_object() && d["version"] == VERSION && d["paths"].is_object() => d,
        _ => json!({"version": VERSION, "cpu": cpu_model(), "paths": {}}),
    };
    doc["features"] = json!(Features::detect().describe());
    doc["paths"][path.name()] = json!({"tuning": tuning, "measured_ms": measured});
    let source = match save(&file, &doc) {
        Ok(()) => format!("measured, saved to {}", file.display()),
        Err(e) => format!("measured (not saved: {}: {e})", file.display()),
    };
    Calibration { tuning, source }
}

/// Bytes one row streams in [`calibrate`]: twice the last-level cache, within 64-256 MiB.
fn stream_bytes() -> usize {
    (2 * last_level_cache().unwrap_or(32 << 20)).clamp(64 << 20, 256 << 20)
}

/// `path`'s tuning in a cache document of this [`VERSION`].
fn entry(doc: &Value, path: Path) -> Option<Tuning> {
    if doc.get("version")? != VERSION {
        return None;
    }
    serde_json::from_value(doc.get("paths")?.get(path.name())?.get("tuning")?.clone()).ok()
}

/// Writes `doc` to `file` whole or not at all (a temporary file renamed over it).
fn save(file: &std::path::Path, doc: &Value) -> std::io::Result<()> {
    let dir = file.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("kernels");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, serde_json::to_string_pretty(doc).unwrap_or_default())?;
    std::fs::rename(&tmp, file).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Bytes of the last-level cache (Linux's sysfs), if known.
fn last_level_cache() -> Option<usize> {
    let dir = std::path::Path::new("/sys/devices/system/cpu/cpu0/cache");
    let mut best = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let size = std::fs::read_to_string(entry.path().join("size")).ok()?;
        let size = size.trim();
        let bytes = match size.strip_suffix('K') {
            Some(k) => k.parse::<usize>().ok()? << 10,
            None => match size.strip_suffix('M') {
                Some(m) => m.parse::<usize>().ok()? << 20,
                None => size.parse().ok()?,
            },
        };
        best = best.max(Some(bytes));
    }
    best
}

/// Each candidate's fastest time (ms) of `rounds` passes of `run`, the candidates taking turns within a round (so
/// that whatever else the machine does falls on all of them), after one pass each to warm up.
fn timed(candidates: &[usize], rounds: usize, mut run: impl FnMut(usize)) -> Vec<(usize, f64)> {
    let mut best = vec![f64::MAX; candidates.len()];
    for round in 0..=rounds {
        for (b, &c) in best.iter_mut().zip(candidates) {
            let t = Instant::now();
            run(c);
            if round > 0 {
                *b = b.min(t.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    candidates.iter().copied().zip(best).collect()
}

/// The candidate (from `times`, in candidate order, the first being the default) to use: the fastest, when it
/// beats the default by 3%.
fn pick(times: &[(usize, f64)]) -> usize {
    let Some(&(default, base)) = times.first() else { return 0 };
    let (best, t) = times.iter().copied().fold((default, base), |b, c| if c.1 < b.1 { c } else { b });
    if t < base * 0.97 {
        best
    } else {
        default
    }
}

/// Measures the candidates on one thread, one row over `bytes` of bf16 matrices, eight rows over up to 32 MiB of
/// them; the chosen tuning and each candidate's time (ms).
fn measure(path: Path, bytes: usize) -> (Tuning, Value) {
    let run = || {
        // One (1024, 1024) bf16 matrix is 2 MiB.
        let (out, inp) = (1024usize, 1024usize);
        let count = (bytes / (2 * out * inp)).max(1);
        let value = bf16::from_f32(0.5);
        // The values do not matter to the speed: the matrices are filled, not packed.
        let matrices: Vec<PackedMatrix> = (0..count)
            .map(|_| {
                let data = match path {
                    Path::Avx512Bf16 => Packed::Bf16Pairs(vec![value; out * inp]),
                    _ => Packed::Bf16(vec![value; out * inp]),
                };
                PackedMatrix { data, out, inp, path }
            })
            .collect();
        let x: Vec<f32> = (0..8 * inp).map(|i| (i % 7) as f32 * 0.1 - 0.3).collect();
        let stream = |tuning: Tuning, rows: usize, matrices: &[PackedMatrix]| {
            for m in matrices {
                std::hint::black_box(m.matmul_tuned(&x[..rows * inp], rows, tuning));
            }
        };
        // Ordered with the default first (see `pick`).
        let aheads: Vec<usize> = std::iter::once(Tuning::DEFAULT.row_ahead)
            .chain(Tuning::AHEADS.into_iter().filter(|&a| a != Tuning::DEFAULT.row_ahead))
            .collect();
        let aheads = timed(&aheads, 7, |a| stream(Tuning { row_ahead: a, ..Tuning::DEFAULT }, 1, &matrices));
        let batch = &matrices[..count.min(16)];
        let blocks: Vec<usize> = std::iter::once(Tuning::DEFAULT.block_bytes)
            .chain(Tuning::BLOCKS.into_iter().filter(|&b| b != Tuning::DEFAULT.block_bytes))
            .collect();
        let blocks = timed(&blocks, 7, |b| stream(Tuning { block_bytes: b, ..Tuning::DEFAULT }, 8, batch));
        let tuning = Tuning { block_bytes: pick(&blocks), row_ahead: pick(&aheads) };
        let table = |times: &[(usize, f64)]| {
            Value::Object(times.iter().map(|(k, t)| (k.to_string(), json!((t * 1000.0).round() / 1000.0))).collect())
        };
        (tuning, json!({"one_row_by_row_ahead": table(&aheads), "eight_rows_by_block_bytes": table(&blocks)}))
    };
    match rayon::ThreadPoolBuilder::new().num_threads(1).build() {
        Ok(pool) => pool.install(run),
        Err(_) => run(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_stays_unless_a_candidate_is_clearly_faster() {
        assert_eq!(pick(&[(16, 10.0), (8, 9.8), (32, 10.5)]), 16);
        assert_eq!(pick(&[(16, 10.0), (8, 9.5), (32, 9.6)]), 8);
        assert_eq!(pick(&[(0, 10.0)]), 0);
    }

    #[test]
    fn cache_names_are_safe_file_names() {
        assert_eq!(slug("Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"), "intel-r-xeon-r-platinum-8481c-cpu-2-70ghz");
        assert_eq!(slug("AMD EPYC"), "amd-epyc");
        assert_eq!(slug("../.."), "unknown");
        assert_eq!(slug(""), "unknown");
    }

    #[test]
    fn stream_ahead_stays_within_the_matrix() {
        let data = [0u16; 100];
        assert!(Tuning::DEFAULT.stream_ahead(&data, 10).is_empty());
        let t = Tuning { row_ahead: 40, ..Tuning::DEFAULT };
        assert_eq!(t.stream_ahead(&data, 10).len(), 10);
        assert_eq!(t.stream_ahead(&data[..25], 10).len(), 5);
        assert!(t.stream_ahead(&data[..15], 10).is_empty());
        assert_eq!(Tuning::DEFAULT.block_inputs(64 * 4), 64);
        assert_eq!(Tuning { block_bytes: 1, ..Tuning::DEFAULT }.block_inputs(256), 1);
    }

    #[test]
    fn a_measured_tuning_is_saved_and_read_back_per_path() -> Result<()> {
        let dir = tempfile::tempdir().expect("temporary folder");
        let file = dir.path().join("kernels-test.json");
        let path = crate::dispatch::choose(Features::detect());
        if path == Path::Portable {
            crate::skip("calibration: the portable path is not calibrated, and this CPU has no other");
            return Ok(());
        }
        let small = 8 << 20;
        let first = cached_or_measured(path, Some(file.clone()), false, small);
        assert!(first.source.starts_with("measured, saved to"), "{}", first.source);
        assert!(Tuning::BLOCKS.contains(&first.tuning.block_bytes) && Tuning::AHEADS.contains(&first.tuning.row_ahead));
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&file).expect("written")).expect("json");
        assert_eq!(doc["version"], VERSION);
        assert!(doc["paths"][path.name()]["measured_ms"]["one_row_by_row_ahead"].is_object(), "{doc}");
        println!("{path}: {doc}");
        let again = cached_or_measured(path, Some(file.clone()), false, small);
        assert_eq!(again, Calibration { tuning: first.tuning, source: format!("cached in {}", file.display()) });
        // An entry of another version, or a file that is not JSON, is measured again.
        std::fs::write(&file, r#"{"version": 0, "paths": {}}"#).expect("write");
        assert!(cached_or_measured(path, Some(file.clone()), false, small).source.starts_with("measured"));
        std::fs::write(&file, "not json").expect("write");
        assert!(cached_or_measured(path, Some(file.clone()), false, small).source.starts_with("measured"));
        // `measure` (CLEM_KERNELS_TUNING=measure) ignores a valid cache entry.
        assert!(cached_or_measured(path, Some(file.clone()), true, small).source.starts_with("measured"));
        Ok(())
    }
}
