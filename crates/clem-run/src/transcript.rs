//! Self-contained HTML transcripts of recorded episodes (`clem transcribe`): one `transcript.html` per
//! instance folder (the dialogue as a chat; each reply's prompt and raw response one click away in a
//! `<details>`), and an `index.html` at the results root. No network assets: inline CSS, one tiny inline
//! script, and a Content-Security-Policy that forbids loading anything. Every recorded string is HTML-escaped.
//! Beside it goes clemcore's `transcript.tex` ([`crate::tex`]).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::fsio::{self, FsError};

/// One transcript written.
#[derive(Clone, Debug)]
pub struct Written {
    /// The instance folder, relative to the results root.
    pub rel_dir: PathBuf,
    pub status: &'static str,
    pub main_score: Option<f64>,
    pub game: String,
    pub experiment: String,
    pub run_dir: String,
}

/// What `transcribe` did.
#[derive(Clone, Debug, Default)]
pub struct TranscribeReport {
    pub written: Vec<Written>,
    /// Folders whose records could not be read, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
    /// Folders with an HTML transcript but no transcript.tex (records clemcore cannot typeset), with the reason.
    pub tex_skipped: Vec<(PathBuf, String)>,
    pub index: PathBuf,
}

/// Escapes text for HTML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Percent-encodes one path segment for an href.
fn url_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

const STYLE: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;background:#f4f5f7;color:#1d1f23}
header{background:#263238;color:#fff;padding:12px 20px}header h1{font-size:18px;margin:0 0 4px}
header p{margin:0;font-size:13px;opacity:.85}main{max-width:900px;margin:0 auto;padding:16px}
.round{margin:18px 0 6px;font-size:12px;color:#666;text-transform:uppercase;letter-spacing:.05em}
.msg{margin:8px 0;padding:8px 12px;border-radius:10px;max-width:75%;white-space:pre-wrap;word-wrap:break-word}
.to-player{background:#fff;border:1px solid #d0d4da}.from-player{background:#d8f0d8;margin-left:auto}
.self{background:#fff4d6;max-width:100%;font-size:13px;text-align:center;margin-left:auto;margin-right:auto}
.who{font-size:11px;color:#555;margin-bottom:3px;white-space:normal}
details{margin-top:6px;font-size:12px;white-space:normal}pre{white-space:pre-wrap;word-wrap:break-word;
background:#fafafa;border:1px solid #ddd;padding:6px;max-height:400px;overflow:auto}
.status{display:inline-block;padding:1px 8px;border-radius:8px;font-size:12px;background:#ccc;color:#000}
.completed{background:#8fd19e}.error{background:#f5a3a3}.incomplete{background:#f3d37a}
table{border-collapse:collapse;width:100%;background:#fff}td,th{border:1px solid #ddd;padding:4px 8px;font-size:13px;text-align:left}
";

const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'";

fn page(title: &str, header: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{}</title>\n\
         <style>{STYLE}</style>\n</head>\n<body>\n<header>{header}</header>\n<main>\n{body}</main>\n\
         <script>document.documentElement.setAttribute('data-transcript-ready', '1');</script>\n</body>\n</html>\n",
        escape(title)
    )
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => serde_json::to_string_pretty(other).unwrap_or_default(),
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// The state of an instance folder: `completed`, `error` or `incomplete`.
fn status_of(dir: &Path) -> &'static str {
    if dir.join("completed.json").is_file() {
        "completed"
    } else if dir.join("error.json").is_file() {
        "error"
    } else {
        "incomplete"
    }
}

/// Renders one instance folder's records as HTML.
pub fn render_instance(dir: &Path) -> Result<(String, Written), FsError> {
    let interactions = fsio::read_json(&dir.join("interactions.json"))?;
    let meta = &interactions["meta"];
    let s = |v: &Value| v.as_str().map(String::from).unwrap_or_else(|| v.to_string());
    let (game, experiment, run_dir) = (s(&meta["game_name"]), s(&meta["experiment_name"]), s(&meta["results_folder"]));
    let status = status_of(dir);
    let scores = crate::scores::read(&dir.join("scores.json")).ok();
    let main_score = scores.as_ref().and_then(|v| crate::pyjson::as_f64(&v["episode scores"]["Main Score"]));
    let error = fsio::read_json(&dir.join("error.json")).ok();

    // Calls of every player, in order: a player's n-th reply event comes from its n-th call (clemcore records
    // the call a moment before the event, so their timestamps differ).
    let mut calls: Vec<(String, Value)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(".requests.json")))
            .collect();
        files.sort();
        for f in files {
            let Ok(req) = fsio::read_json(&f) else { continue };
            let player = s(&req["meta"]["player_name"]);
            for c in req["calls"].as_array().into_iter().flatten() {
                calls.push((player.clone(), c["call"].clone()));
            }
        }
    }

    let mut players = Vec::new();
    if let Value::Object(ps) = &interactions["players"] {
        for (name, info) in ps {
            players.push(format!("{} ({}: {})", name, s(&info["game_role"]), s(&info["model_name"])));
        }
    }
    let header = format!(
        "<h1>{} / {} / instance {}</h1><p>{} &middot; <span class=\"status {status}\">{status}</span>{}</p><p>{}</p>",
        escape(&game),
        escape(&experiment),
        escape(&meta["game_id"].to_string()),
        escape(&run_dir),
        main_score.map(|m| format!(" &middot; Main Score {m}")).unwrap_or_default(),
        escape(&players.join("; ")),
    );
    let mut body = String::new();
    if let Some(err) = &error {
        let _ = writeln!(
            body,
            "<div class=\"msg self error\"><div class=\"who\">error</div>{}: {}</div>",
            escape(&s(&err["error"])),
            escape(&s(&err["message"]))
        );
    }
    for (round, events) in interactions["turns"].as_array().into_iter().flatten().enumerate() {
        let _ = writeln!(body, "<div class=\"round\">Round {round}</div>");
        for ev in events.as_array().into_iter().flatten() {
            let from = s(&ev["from"]);
            let to = s(&ev["to"]);
            let action = &ev["action"];
            let kind = s(&action["type"]);
            let class = match (from.as_str(), to.as_str()) {
                ("GM", "GM") => "self",
                ("GM", _) => "to-player",
                _ => "from-player",
            };
            let label = action
                .get("label")
                .and_then(Value::as_str)
                .map(|l| format!(" &middot; {}", escape(l)))
                .unwrap_or_default();
            let _ = write!(
                body,
                "<div class=\"msg {class}\"><div class=\"who\">{} &rarr; {} &middot; {}{label}</div>{}",
                escape(&from),
                escape(&to),
                escape(&kind),
                escape(&text_of(&action["content"]))
            );
            if class == "from-player" {
                let pos = calls.iter().position(|(p, _)| *p == from);
                if let Some(i) = pos {
                    let (_, call) = calls.remove(i);
                    let _ = write!(
                        body,
                        "<details><summary>prompt and raw response</summary><p>Prompt (as sent):</p><pre>{}</pre>\
                         <p>Raw response:</p><pre>{}</pre></details>",
                        escape(&pretty(&call["manipulated_prompt_obj"])),
                        escape(&pretty(&call["raw_response_obj"]))
                    );
                }
            }
            body.push_str("</div>\n");
        }
    }
    let title = format!("{game} {experiment} {} — transcript", meta["game_id"]);
    let written = Written { rel_dir: PathBuf::new(), status, main_score, game, experiment, run_dir };
    Ok((page(&title, &header, &body), written))
}

/// Writes `transcript.html` into every instance folder under `root` and `index.html` at `root`.
pub fn transcribe(root: &Path) -> Result<TranscribeReport, FsError> {
    let mut report = TranscribeReport { index: root.join("index.html"), ..Default::default() };
    for dir in crate::fsio::episode_dirs(root) {
        match render_instance(&dir) {
            Ok((html, mut written)) => {
                fsio::write_atomic(&dir.join("transcript.html"), html.as_bytes())?;
                let tex = crate::scores::read(&dir.join("interactions.json"))
                    .map_err(|e| e.to_string())
                    .and_then(|i| crate::tex::build_tex(&i).map_err(|e| e.to_string()));
                match tex {
                    Ok(tex) => fsio::write_atomic(&dir.join("transcript.tex"), tex.as_bytes())?,
                    Err(e) => report.tex_skipped.push((dir.clone(), e)),
                }
                written.rel_dir = dir.strip_prefix(root).unwrap_or(&dir).to_path_buf();
                report.written.push(written);
            }
            Err(e) => report.skipped.push((dir, e.to_string())),
        }
    }
    let mut rows = String::new();
    for w in &report.written {
        let href: Vec<String> = w.rel_dir.components().map(|c| url_segment(&c.as_os_str().to_string_lossy())).collect();
        let href =
            if href.is_empty() { "transcript.html".to_string() } else { format!("{}/transcript.html", href.join("/")) };
        let _ = writeln!(
            rows,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><a href=\"{}\">{}</a></td><td><span class=\"status {}\">{}</span></td><td>{}</td></tr>",
            escape(&w.run_dir),
            escape(&w.game),
            escape(&w.experiment),
            escape(&href),
            escape(&w.rel_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()),
            w.status,
            w.status,
            w.main_score.map(|m| m.to_string()).unwrap_or_default(),
        );
    }
    let body = format!(
        "<table><thead><tr><th>models</th><th>game</th><th>experiment</th><th>instance</th><th>status</th><th>Main Score</th></tr></thead>\n<tbody>\n{rows}</tbody></table>\n"
    );
    let header = format!(
        "<h1>Transcripts</h1><p>{} episodes in {}</p>",
        report.written.len(),
        escape(&root.display().to_string())
    );
    fsio::write_atomic(&report.index, page("clem transcripts", &header, &body).as_bytes())?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(escape("<b a=\"x\">'&'</b>"), "&lt;b a=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/b&gt;");
        assert_eq!(url_segment("a b#?/é"), "a%20b%23%3F%2F%C3%A9");
    }
}
