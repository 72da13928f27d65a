//! The two settings of the packed products that depend on the machine, measured on it rather than fixed for one
//! CPU: how far ahead one row streaming a matrix (decoding) prefetches, and how many bytes of a panel a block of
//! several rows covers (the slice kept in L1 while the rows pass).
//!
//! [`calibrate`] picks each among a few candidates with a micro-benchmark on one thread (about a second: one row
//! streaming bf16 and f32 matrices twice the last-level cache, clamped to 64-256 MiB, and eight rows over 32 MiB
//! of them; 7 rounds in which the candidates take turns, timed in the thread's CPU time so other processes' turns
//! do not count), once per CPU model and path: the result is cached in `<user cache>/clemrs/kernels-<cpu>.json`
//! (`~/.cache` on Linux) and installed for the process. A candidate replaces the default only when its median
//! round is at least 5% faster than the default's in the same round, so noise keeps today's constants.
//! `CLEM_KERNELS_TUNING=default` skips the measurement and the cache, `=measure` measures anew (and rewrites the
//! cache). Until a path is calibrated, [`get`] gives [`Tuning::DEFAULT`]. No setting changes any result: only the
//! order memory is fetched in.

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
const VERSION: u64 = 3;

/// Machine-dependent settings of the packed products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tuning {
    /// Bytes of a panel one block of several rows covers.
    pub block_bytes: usize,
    /// Bytes ahead of its reads that one row streaming a matrix prefetches (0: none, the hardware prefetcher's job).
    pub row_ahead: usize,
    /// Panels one row reads at once on the AVX2 and AVX-512 paths: 2 keeps two weight streams in flight (one core
    /// of the 2-core EPYC reads 15 GB/s from one stream, 19 GB/s from two; `row_ahead` is then unused), 1 reads
    /// panel after panel.
    #[serde(default = "one")]
    pub row_panels: usize,
}

fn one() -> usize {
    1
}

impl Tuning {
    /// The constants the AVX2 kernels were tuned with (on an AMD EPYC): 16 KiB blocks, no software prefetch for
    /// one row, two panels at once.
    pub const DEFAULT: Tuning = Tuning { block_bytes: 16 << 10, row_ahead: 0, row_panels: 2 };
    /// The candidates [`calibrate`] measures.
    pub const BLOCKS: [usize; 3] = [8 << 10, 16 << 10, 32 << 10];
    pub const AHEADS: [usize; 4] = [0, 1 << 10, 4 << 10, 16 << 10];
    pub const ROW_PANELS: [usize; 2] = [1, 2];

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

/// Milliseconds of CPU time this thread has run (Linux and other Unixes; elsewhere wall time since a fixed
/// instant): time the thread spent preempted by other processes is not counted, time stalled on memory is.
fn thread_ms() -> f64 {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant the C library defines.
        if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0 {
            return ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6;
        }
    }
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs_f64() * 1e3
}

/// Each candidate's times (ms of this thread's CPU time, see [`thread_ms`]) over `rounds` passes of `run`, the
/// candidates taking turns within a round (so that whatever else the machine does falls on all of them alike),
/// after one pass each to warm up.
fn timed(candidates: &[usize], rounds: usize, mut run: impl FnMut(usize)) -> Vec<(usize, Vec<f64>)> {
    let mut times = vec![Vec::with_capacity(rounds); candidates.len()];
    for round in 0..=rounds {
        for (t, &c) in times.iter_mut().zip(candidates) {
            let start = thread_ms();
            run(c);
            if round > 0 {
                t.push(thread_ms() - start);
            }
        }
    }
    candidates.iter().copied().zip(times).collect()
}

/// The median of each round's time over the default's (the first candidate's) in that round: robust to a burst of
/// other work, which slows a round's candidates alike or one pass alone.
fn median_ratio(times: &[f64], default: &[f64]) -> f64 {
    let mut ratios: Vec<f64> = times.iter().zip(default).map(|(t, d)| t / d.max(1e-9)).collect();
    ratios.sort_by(f64::total_cmp);
    ratios.get(ratios.len() / 2).copied().unwrap_or(1.0)
}

/// The candidate to use (of `times`, the first being the default): the one with the lowest [`median_ratio`],
/// when that is below 0.95 (5% faster: on a busy machine rounds vary by a few percent); else the default.
fn pick(times: &[(usize, Vec<f64>)]) -> usize {
    let Some((default, base)) = times.first() else { return 0 };
    let (best, ratio) =
        times
            .iter()
            .map(|(c, t)| (*c, median_ratio(t, base)))
            .fold((*default, 1.0), |b, c| if c.1 < b.1 { c } else { b });
    if ratio < 0.95 {
        best
    } else {
        *default
    }
}

/// Measures the candidates on one thread, one row over `bytes` of matrices, eight rows over up to 32 MiB of them;
/// the chosen tuning and each candidate's times.
fn measure(path: Path, bytes: usize) -> (Tuning, Value) {
    let run = || {
        // Half the bytes in bf16 matrices, half in f32 ones (a setting must suit both: prefetching ahead of one
        // row can help one dtype and slow the other), of a small model's shapes and a larger one's in turn. The
        // values do not matter to the speed: the matrices are filled, not packed.
        let shapes = [(1536usize, 576usize), (2048, 1024)];
        let mut matrices: Vec<PackedMatrix> = Vec::new();
        for (width, as_bf16) in [(2usize, true), (4, false)] {
            let mut filled = 0;
            for (out, inp) in shapes.iter().copied().cycle() {
                if filled >= bytes / 2 {
                    break;
                }
                filled += width * out * inp;
                let data = match (as_bf16, path) {
                    (true, Path::Avx512Bf16) => Packed::Bf16Pairs(vec![bf16::from_f32(0.5); out * inp]),
                    (true, _) => Packed::Bf16(vec![bf16::from_f32(0.5); out * inp]),
                    (false, _) => Packed::F32(vec![0.5; out * inp]),
                };
                matrices.push(PackedMatrix { data, out, inp, path });
            }
        }
        let x: Vec<f32> = (0..8 * 2048).map(|i| (i % 7) as f32 * 0.1 - 0.3).collect();
        let stream = |tuning: Tuning, rows: usize, matrices: &mut dyn Iterator<Item = &PackedMatrix>| {
            for m in matrices {
                std::hint::black_box(m.matmul_tuned(&x[..rows * m.inp], rows, tuning));
            }
        };
        // Eight rows over 32 MiB of them, both dtypes.
        let mut batch_bytes = 0;
        let batch: Vec<&PackedMatrix> = matrices
            .iter()
            .step_by(2)
            .chain(matrices.iter().skip(1).step_by(2))
            .take_while(|m| {
                batch_bytes += m.out * m.inp * if m.dtype() == crate::StoredDtype::F32 { 4 } else { 2 };
                batch_bytes <= 32 << 20
            })
            .collect();
        // Ordered with the default first (see `pick`).
        let aheads: Vec<usize> = std::iter::once(Tuning::DEFAULT.row_ahead)
            .chain(Tuning::AHEADS.into_iter().filter(|&a| a != Tuning::DEFAULT.row_ahead))
            .collect();
        // Panels at once first, prefetch distances then for one panel at a time (two panels do not prefetch).
        let panels: Vec<usize> = std::iter::once(Tuning::DEFAULT.row_panels)
            .chain(Tuning::ROW_PANELS.into_iter().filter(|&n| n != Tuning::DEFAULT.row_panels))
            .collect();
        let panels =
            timed(&panels, 7, |n| stream(Tuning { row_panels: n, ..Tuning::DEFAULT }, 1, &mut matrices.iter()));
        let aheads = timed(&aheads, 7, |a| {
            stream(Tuning { row_ahead: a, row_panels: 1, ..Tuning::DEFAULT }, 1, &mut matrices.iter())
        });
        let blocks: Vec<usize> = std::iter::once(Tuning::DEFAULT.block_bytes)
            .chain(Tuning::BLOCKS.into_iter().filter(|&b| b != Tuning::DEFAULT.block_bytes))
            .collect();
        let blocks =
            timed(&blocks, 7, |b| stream(Tuning { block_bytes: b, ..Tuning::DEFAULT }, 8, &mut batch.iter().copied()));
        let row_panels = pick(&panels);
        // The default distance is the one measured against: with one panel at a time, a better one stands.
        let row_ahead = if row_panels == 1 { pick(&aheads) } else { Tuning::DEFAULT.row_ahead };
        let tuning = Tuning { block_bytes: pick(&blocks), row_ahead, row_panels };
        // Per candidate: its fastest pass and its median ratio to the default.
        let table = |times: &[(usize, Vec<f64>)]| {
            let base = times.first().map(|(_, t)| t.clone()).unwrap_or_default();
            let round = |x: f64| (x * 1000.0).round() / 1000.0;
            let rows = times.iter().map(|(k, t)| {
                let fastest = t.iter().copied().fold(f64::MAX, f64::min);
                (k.to_string(), json!({"fastest_ms": round(fastest), "vs_default": round(median_ratio(t, &base))}))
            });
            Value::Object(rows.collect())
        };
        let times = json!({
            "one_row_by_panels_at_once": table(&panels),
            "one_row_by_row_ahead": table(&aheads),
            "eight_rows_by_block_bytes": table(&blocks),
        });
        (tuning, times)
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
        let t = |v: &[f64]| v.to_vec();
        assert_eq!(pick(&[(16, t(&[10.0, 10.0, 10.0])), (8, t(&[9.6, 9.6, 9.6])), (32, t(&[10.5, 11.0, 9.0]))]), 16);
        assert_eq!(pick(&[(16, t(&[10.0, 10.0, 10.0])), (8, t(&[9.3, 9.3, 9.2])), (32, t(&[9.4, 9.4, 9.4]))]), 8);
        // One lucky pass does not make a candidate faster: the median round decides.
        assert_eq!(pick(&[(0, t(&[10.0, 10.0, 10.0])), (1, t(&[5.0, 10.0, 10.2]))]), 0);
        // A burst that slowed a whole round (default included) does not count against anyone.
        assert_eq!(pick(&[(0, t(&[20.0, 10.0, 10.0])), (1, t(&[18.0, 9.0, 9.0]))]), 1);
        assert_eq!(pick(&[(0, t(&[10.0]))]), 0);
        assert_eq!(pick(&[]), 0);
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
        assert!(Tuning::ROW_PANELS.contains(&first.tuning.row_panels));
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&file).expect("written")).expect("json");
        assert_eq!(doc["version"], VERSION);
        assert!(doc["paths"][path.name()]["measured_ms"]["one_row_by_row_ahead"]["0"]["vs_default"] == 1.0, "{doc}");
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
