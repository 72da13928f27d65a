//! `clem eval`: clemcore's results table (`clemeval.py`) from every scores.json under a results folder, with
//! the same columns, rows and numbers, written as `results.csv` and `results.html` as pandas writes them.
//!
//! Per model and game: `% Played` (the mean of 1 - Aborted, x 100) and `Quality Score` (the mean Main Score
//! over played episodes: NaN does not count), each rounded to 2 decimals; `Quality Score (std)` with `--std`.
//! Per model (`all`): the means of those over games, rounded; `clemscore` = Average % Played / 100 x Average
//! Quality Score, rounded. Means are pandas' (Kahan-compensated sums), standard deviations pandas' (Welford,
//! ddof 1), rounding numpy's (`rint(x * 100) / 100`). A scores.json is found by its name ending in
//! `scores.json`; its four parent folders name model, game, experiment and episode. clemcore's `raw.csv` and
//! its `-m`/`-g` incremental mode are not written or offered.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::fsio::{self, FsError};
use crate::pyjson;
use crate::scores::{self, ABORTED, BENCH_SCORE, PLAYED};

/// A folder whose scores cannot be evaluated; the message names the file and key.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("no scores.json under {} (score the runs first: clem score)", .0.display())]
    NoScores(PathBuf),
    #[error("{}: {message}", path.display())]
    Scores { path: PathBuf, message: String },
}

/// How to build the table.
#[derive(Clone, Copy, Debug, Default)]
pub struct EvalOptions {
    /// Add `Quality Score (std)` per game (`--std`).
    pub show_std: bool,
    /// Sort rows by clemscore, best first (`--sort clemscore`); else by model name.
    pub sort_by_clemscore: bool,
}

/// The results table: one row per model; NaN where clemcore's table has no number.
#[derive(Clone, Debug, PartialEq)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<(String, Vec<f64>)>,
}

/// numpy's `round(x, 2)`.
fn round2(x: f64) -> f64 {
    (x * 100.0).round_ties_even() / 100.0
}

/// pandas' groupby mean: a Kahan-compensated sum over the values that are not NaN; NaN when there are none.
fn mean(values: &[f64]) -> f64 {
    let (mut sum, mut comp, mut n) = (0.0f64, 0.0f64, 0u32);
    for &v in values.iter().filter(|v| !v.is_nan()) {
        n += 1;
        let y = v - comp;
        let t = sum + y;
        comp = t - sum - y;
        if comp.is_nan() {
            comp = 0.0;
        }
        sum = t;
    }
    if n == 0 {
        f64::NAN
    } else {
        sum / f64::from(n)
    }
}

/// pandas' groupby std (Welford, ddof 1) over the values that are not NaN.
fn std(values: &[f64]) -> f64 {
    let (mut n, mut m, mut ssq) = (0u32, 0.0f64, 0.0f64);
    for &v in values.iter().filter(|v| !v.is_nan()) {
        n += 1;
        let old = m;
        m += (v - old) / f64::from(n);
        ssq += (v - m) * (v - old);
    }
    if n <= 1 {
        f64::NAN
    } else {
        (ssq / f64::from(n - 1)).sqrt()
    }
}

/// One episode's values for the table.
struct Episode {
    game: String,
    model: String,
    played: Option<f64>,
    main: Option<f64>,
}

/// Files under `root` whose name ends in `scores.json`, sorted (symlinked folders are not followed).
fn score_files(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            if is_dir {
                stack.push(e.path());
            } else if e.file_name().to_string_lossy().ends_with("scores.json") {
                found.push(e.path());
            }
        }
    }
    found.sort();
    found
}

fn read_episode(path: &Path) -> Result<Episode, EvalError> {
    let err = |message: String| EvalError::Scores { path: path.to_path_buf(), message };
    let parts: Vec<String> = path.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    let [.., model, game, _experiment, _episode, _file] = parts.as_slice() else {
        return Err(err("not in a <model>/<game>/<experiment>/<episode>/ folder".into()));
    };
    let scores = scores::read_episode_scores(path)?;
    if scores.contains_key(PLAYED) {
        return Err(err(format!("episode scores hold {PLAYED:?}, which clem eval computes from {ABORTED:?}")));
    }
    let number = |key: &str, null_is_nan: bool| -> Result<Option<f64>, EvalError> {
        match scores.get(key) {
            None => Ok(None),
            Some(Value::Null) if null_is_nan => Ok(Some(f64::NAN)),
            Some(v) => {
                pyjson::as_f64(v).map(Some).ok_or_else(|| err(format!("episode scores: {key:?} is {v}, not a number")))
            }
        }
    };
    Ok(Episode {
        game: game.clone(),
        model: model.clone(),
        played: number(ABORTED, false)?.map(|a| 1.0 - a),
        main: number(BENCH_SCORE, true)?,
    })
}

/// Builds the table from every scores.json under `root`.
pub fn evaluate(root: &Path, opts: EvalOptions) -> Result<Table, EvalError> {
    let files = score_files(root);
    if files.is_empty() {
        return Err(EvalError::NoScores(root.to_path_buf()));
    }
    // (game, model) -> (played values, Main Scores): the rows pandas groups.
    let mut groups: BTreeMap<(String, String), (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    let mut models = BTreeSet::new();
    for path in &files {
        let ep = read_episode(path)?;
        // A model whose scores have neither metric has no row in clemcore's table either.
        if ep.played.is_some() || ep.main.is_some() {
            models.insert(ep.model.clone());
        }
        let g = groups.entry((ep.game, ep.model)).or_default();
        g.0.extend(ep.played);
        g.1.extend(ep.main);
    }
    // Cells present in pandas' pivot: (game, metric) -> model -> value.
    let mut cells: BTreeMap<(String, String), BTreeMap<String, f64>> = BTreeMap::new();
    let mut per_model: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for ((game, model), (played, main)) in &groups {
        if !played.is_empty() {
            let v = round2(mean(played) * 100.0);
            cells.entry((game.clone(), "% Played".into())).or_default().insert(model.clone(), v);
            per_model.entry((model.clone(), "Average % Played".into())).or_default().push(v);
        }
        if !main.is_empty() {
            let v = round2(mean(main));
            cells.entry((game.clone(), "Quality Score".into())).or_default().insert(model.clone(), v);
            per_model.entry((model.clone(), "Average Quality Score".into())).or_default().push(v);
            if opts.show_std {
                let s = round2(std(main));
                cells.entry((game.clone(), "Quality Score (std)".into())).or_default().insert(model.clone(), s);
            }
        }
    }
    for ((model, metric), values) in &per_model {
        cells.entry(("all".into(), metric.clone())).or_default().insert(model.clone(), round2(mean(values)));
    }
    let cell = |game: &str, metric: &str, model: &str| -> f64 {
        cells.get(&(game.to_string(), metric.to_string())).and_then(|m| m.get(model)).copied().unwrap_or(f64::NAN)
    };
    let mut columns = vec!["-, clemscore".to_string()];
    columns.extend(cells.keys().map(|(g, m)| format!("{g}, {m}")));
    let mut rows: Vec<(String, Vec<f64>)> = models
        .iter()
        .map(|model| {
            let clemscore =
                round2((cell("all", "Average % Played", model) / 100.0) * cell("all", "Average Quality Score", model));
            let mut values = vec![clemscore];
            values.extend(cells.keys().map(|(g, m)| cell(g, m, model)));
            (model.clone(), values)
        })
        .collect();
    if opts.sort_by_clemscore {
        // Descending, NaN last (pandas' sort_values).
        rows.sort_by(|a, b| match (a.1[0].is_nan(), b.1[0].is_nan()) {
            (false, false) => b.1[0].total_cmp(&a.1[0]),
            (x, y) => x.cmp(&y),
        });
    }
    Ok(Table { columns, rows })
}

/// Python's `repr(float)`: shortest round-trip digits, `1e-05` and `1e+16` style beyond [1e-4, 1e16).
pub fn py_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if x.is_sign_negative() { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let point = exp + 1;
        let body = if point <= 0 {
            format!("0.{}{digits}", "0".repeat(point.unsigned_abs() as usize))
        } else if point as usize >= digits.len() {
            format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
        } else {
            format!("{}.{}", &digits[..point as usize], &digits[point as usize..])
        };
        format!("{sign}{body}")
    } else {
        let frac = if digits.len() > 1 { format!(".{}", &digits[1..]) } else { String::new() };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{}{frac}e{esign}{:02}", &digits[..1], exp.unsigned_abs())
    }
}

/// Python's `"{: .6e}".format(x)`.
fn py_sci6(x: f64) -> String {
    let s = format!("{:.6e}", x.abs());
    let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let sign = if x.is_sign_negative() { "-" } else { " " };
    format!("{sign}{mantissa}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.unsigned_abs())
}

/// A column's cells as pandas' `to_html` formats floats (`FloatArrayFormatter`: fixed 6 decimals, then
/// trailing zeros trimmed alike in every cell; scientific for tiny or huge values; NaN as `NaN`).
pub fn html_column(values: &[f64]) -> Vec<String> {
    let fixed = |v: f64| {
        if v.is_nan() {
            "NaN".to_string()
        } else if v.is_infinite() {
            if v > 0.0 {
                " inf".into()
            } else {
                "-inf".into()
            }
        } else if v.is_sign_negative() {
            format!("-{:.6}", v.abs())
        } else {
            format!(" {v:.6}")
        }
    };
    let mut cells: Vec<String> = values.iter().map(|&v| fixed(v)).collect();
    let too_long = cells.iter().map(String::len).max().unwrap_or(0) > 12;
    let large = values.iter().any(|v| v.abs() > 1e6);
    let small = values.iter().any(|v| v.abs() < 1e-6 && v.abs() > 0.0);
    if small || (too_long && large) {
        cells = values.iter().map(|&v| if v.is_nan() { "NaN".into() } else { py_sci6(v) }).collect();
    }
    // _trim_zeros_float
    let is_number = |s: &str| {
        let t = s.trim_start().trim_start_matches(['+', '-']);
        t.split_once('.').is_some_and(|(a, b)| {
            !a.is_empty() && a.bytes().all(|c| c.is_ascii_digit()) && b.bytes().all(|c| c.is_ascii_digit())
        })
    };
    loop {
        let numbers: Vec<&String> = cells.iter().filter(|c| is_number(c)).collect();
        if numbers.is_empty() || !numbers.iter().all(|c| c.ends_with('0')) {
            break;
        }
        for c in cells.iter_mut().filter(|c| is_number(c)) {
            c.pop();
        }
    }
    for c in cells.iter_mut().filter(|c| is_number(c) && c.ends_with('.')) {
        c.push('0');
    }
    cells.into_iter().map(|c| c.trim().to_string()).collect()
}

/// A CSV field as Python's `csv` module writes it (QUOTE_MINIMAL).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").trim().to_string()
}

impl Table {
    /// results.csv as pandas' `to_csv` writes it.
    pub fn to_csv(&self) -> String {
        let mut out = String::new();
        let header: Vec<String> = self.columns.iter().map(|c| csv_field(c)).collect();
        let _ = writeln!(out, ",{}", header.join(","));
        for (model, values) in &self.rows {
            let cells: Vec<String> =
                values.iter().map(|&v| if v.is_nan() { String::new() } else { py_float_repr(v) }).collect();
            let _ = writeln!(out, "{},{}", csv_field(model), cells.join(","));
        }
        out
    }

    /// Each cell as pandas' `to_html` shows it, column by column.
    pub fn formatted(&self) -> Vec<Vec<String>> {
        let columns: Vec<Vec<String>> = (0..self.columns.len())
            .map(|j| html_column(&self.rows.iter().map(|(_, v)| v[j]).collect::<Vec<_>>()))
            .collect();
        (0..self.rows.len()).map(|i| columns.iter().map(|c| c[i].clone()).collect()).collect()
    }

    /// results.html as pandas' `to_html` writes it.
    pub fn to_html(&self) -> String {
        let mut out = String::from("<table border=\"1\" class=\"dataframe\">\n  <thead>\n");
        out.push_str("    <tr style=\"text-align: right;\">\n      <th></th>\n");
        for c in &self.columns {
            let _ = writeln!(out, "      <th>{}</th>", html_escape(c));
        }
        out.push_str("    </tr>\n  </thead>\n  <tbody>\n");
        for ((model, _), cells) in self.rows.iter().zip(self.formatted()) {
            let _ = writeln!(out, "    <tr>\n      <th>{}</th>", html_escape(model));
            for c in cells {
                let _ = writeln!(out, "      <td>{}</td>", html_escape(&c));
            }
            out.push_str("    </tr>\n");
        }
        out.push_str("  </tbody>\n</table>");
        out
    }

    /// Writes results.csv and results.html into `dir`; returns their paths.
    pub fn write(&self, dir: &Path) -> Result<(PathBuf, PathBuf), FsError> {
        let (csv, html) = (dir.join("results.csv"), dir.join("results.html"));
        fsio::write_atomic(&csv, self.to_csv().as_bytes())?;
        fsio::write_atomic(&html, self.to_html().as_bytes())?;
        Ok((csv, html))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_as_python_and_pandas_print_them() {
        for (x, s) in [
            (50.0, "50.0"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (66.67, "66.67"),
            (0.1, "0.1"),
            (1e-5, "1e-05"),
            (1.5e16, "1.5e+16"),
            (1e15, "1000000000000000.0"),
            (0.0001, "0.0001"),
            (123.456, "123.456"),
        ] {
            assert_eq!(py_float_repr(x), s, "{x}");
        }
        assert_eq!(html_column(&[0.0, 50.0, f64::NAN]), ["0.0", "50.0", "NaN"]);
        assert_eq!(html_column(&[33.33, 100.0]), ["33.33", "100.00"]);
        assert_eq!(html_column(&[f64::NAN]), ["NaN"]);
        assert_eq!(html_column(&[1e-7, 1.0]), ["1.000000e-07", "1.000000e+00"]);
        assert_eq!(round2(2.0 / 3.0 * 100.0), 66.67);
        assert_eq!(round2(0.125), 0.12, "ties to even, as numpy");
        assert_eq!(mean(&[1.0, f64::NAN, 0.0]), 0.5);
        assert!(mean(&[f64::NAN]).is_nan());
        assert!(std(&[1.0]).is_nan());
        assert_eq!(std(&[0.0, 100.0]), 70.71067811865476);
        assert_eq!(csv_field("a, b"), "\"a, b\"");
    }

    #[test]
    fn a_folder_becomes_clemcores_table() {
        let dir = tempfile::tempdir().expect("tempdir");
        let put = |model: &str, game: &str, ep: u32, aborted: u8, main: f64| {
            let d = dir.path().join(format!("{model}/{game}/e/instance_{ep:05}"));
            let scores = serde_json::json!({"episode scores": {"Aborted": aborted, "Main Score": pyjson::float(main)}});
            scores::write(&d.join("scores.json"), &scores).expect("writes");
        };
        // Five successes and five aborts: % Played 50, Quality 100, clemscore 50 (not 25, as a 0 for the
        // aborted would give).
        for ep in 0..5 {
            put("a", "g", ep, 0, 100.0);
            put("a", "g", ep + 5, 1, f64::NAN);
        }
        put("b", "h", 0, 1, f64::NAN);
        let t = evaluate(dir.path(), EvalOptions::default()).expect("table");
        assert_eq!(
            t.columns,
            [
                "-, clemscore",
                "all, Average % Played",
                "all, Average Quality Score",
                "g, % Played",
                "g, Quality Score",
                "h, % Played",
                "h, Quality Score"
            ]
        );
        assert_eq!(t.rows[0].0, "a");
        assert_eq!(&t.rows[0].1[..5], &[50.0, 50.0, 100.0, 50.0, 100.0]);
        assert!(t.rows[1].1[0].is_nan());
        assert_eq!(
            t.to_csv(),
            ",\"-, clemscore\",\"all, Average % Played\",\"all, Average Quality Score\",\"g, % Played\",\
             \"g, Quality Score\",\"h, % Played\",\"h, Quality Score\"\na,50.0,50.0,100.0,50.0,100.0,,\n\
             b,,0.0,,,,0.0,\n"
        );
        assert!(matches!(evaluate(Path::new("a/g"), EvalOptions::default()), Err(EvalError::NoScores(_))));
        let empty = tempfile::tempdir().expect("tempdir");
        assert!(matches!(evaluate(empty.path(), EvalOptions::default()), Err(EvalError::NoScores(_))));
    }
}
