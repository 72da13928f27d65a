//! `transcript.tex`, as clemcore's `clem transcribe` writes it (`clemgame/transcripts/builder.py`,
//! `build_tex`, with `tex_templates.py`), byte for byte: every event of every round as a coloured bubble of
//! a LaTeX `supertabular`, text escaped as pylatex's `escape_latex`. Two tracks (A left, B right) when the
//! episode has two players besides the game master, one track otherwise. Records clemcore cannot transcribe
//! (an event from or to an unknown player, a player-to-player message, a ninth player) are refused here too.

use serde_json::Value;

use crate::eval::py_float_repr;

/// interactions.json that `build_tex` cannot render (clemcore raises there); the message names the key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TexError(String);

const HEADER: &str = concat!(
    "\n",
    "\\documentclass{article}\n",
    "\\usepackage{colortbl}\n",
    "\\usepackage{makecell}\n",
    "\\usepackage{multirow}\n",
    "\\usepackage{supertabular}\n",
    "\n",
    "\\begin{document}\n",
    "\n",
    "\\newcounter{utterance}\n",
    "\n",
    "\\centering \\large $title\n",
    "\\vspace{24pt}\n",
    "\n",
    "{ \\footnotesize  \\setcounter{utterance}{1}\n",
    "\\setlength{\\tabcolsep}{0pt}\n",
    "\\begin{supertabular}{c@{$\\;$}|p{.15\\linewidth}@{}p{.15\\linewidth}p{.15\\linewidth}p{.15\\linewidth}p{.15\\linewidth}p{.15\\linewidth}}\n",
    "$column_header\n",
    "    \\hline\n"
);

const EVENT: &str = concat!(
    "\n",
    "    \\theutterance \\stepcounter{utterance}  \n",
    "    $cols_init \\multicolumn{$ncols}{p{$width\\linewidth}}{\n",
    "        \\cellcolor[rgb]{$rgb}{\n",
    "            \\makecell[{{p{\\linewidth}}}]{\n",
    "                \\texttt{\\tiny{[$speakers]}}\n",
    "                $msg\n",
    "            }\n",
    "        }\n",
    "    }\n",
    "    $cols_end \\\\ \\\\\n"
);

const FOOTER: &str = concat!("\n", "\\end{supertabular}\n", "}\n", "\n", "\\end{document}\n");

const ONE_TRACK_HEADER: &str = "    \\# & \\multicolumn{2}{c}{Player} && \\multicolumn{2}{c}{Game Master} \\\\";
const TWO_TRACKS_HEADER: &str = "    \\# & $\\;$A & \\multicolumn{4}{c}{Game Master} & $\\;\\:$B\\\\";
const COLORS: [&str; 8] = [
    "0.561,0.737,0.561",
    "0.373,0.62,0.627",
    "0.804,0.361,0.361",
    "0.804,0.498,0.196",
    "0.718,0.561,0.718",
    "0.961,0.871,0.702",
    "0.957,0.643,0.376",
    "0.412,0.353,0.804",
];

/// Python's `str.isspace` for one character.
fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.splitlines()`.
fn py_splitlines(s: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let breaks = matches!(
            c,
            '\n' | '\r' | '\u{0b}' | '\u{0c}' | '\u{1c}' | '\u{1d}' | '\u{1e}' | '\u{85}' | '\u{2028}' | '\u{2029}'
        );
        if breaks {
            lines.push(&s[start..i]);
            let mut end = i + c.len_utf8();
            if c == '\r' {
                if let Some(&(j, '\n')) = chars.peek() {
                    chars.next();
                    end = j + 1;
                }
            }
            start = end;
        }
    }
    if start < s.len() {
        lines.push(&s[start..]);
    }
    lines
}

/// pylatex's `escape_latex`.
pub fn escape_latex(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("\\&"),
            '%' => out.push_str("\\%"),
            '$' => out.push_str("\\$"),
            '#' => out.push_str("\\#"),
            '_' => out.push_str("\\_"),
            '{' => out.push_str("\\{"),
            '}' => out.push_str("\\}"),
            '~' => out.push_str("\\textasciitilde{}"),
            '^' => out.push_str("\\^{}"),
            '\\' => out.push_str("\\textbackslash{}"),
            '\n' => out.push_str("\\newline%\n"),
            '-' => out.push_str("{-}"),
            '\u{a0}' => out.push('~'),
            '[' => out.push_str("{[}"),
            ']' => out.push_str("{]}"),
            c => out.push(c),
        }
    }
    out
}

/// Python's `repr` of a string.
fn py_repr_str(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    let mut out = String::new();
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..=0xa0).contains(&(c as u32)) || c == '\u{ad}' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if matches!(c, '\u{2028}' | '\u{2029}' | '\u{200b}'..='\u{200f}' | '\u{feff}') => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Python's `repr` of a JSON value as `json.load` gives it (dict, list, str, int, float, bool, None).
fn py_repr(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) => py_float_repr(f),
            _ => n.to_string(),
        },
        Value::String(s) => py_repr_str(s),
        Value::Array(items) => format!("[{}]", items.iter().map(py_repr).collect::<Vec<_>>().join(", ")),
        Value::Object(m) => {
            let items: Vec<String> = m.iter().map(|(k, v)| format!("{}: {}", py_repr_str(k), py_repr(v))).collect();
            format!("{{{}}}", items.join(", "))
        }
    }
}

/// Python's `str()` of a JSON value (an f-string field).
fn py_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => py_repr(other),
    }
}

/// `string.Template.substitute` with the names given.
fn substitute(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() * 2);
    let mut rest = template;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        rest = &rest[pos + 1..];
        let len = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
        match values.iter().find(|(name, _)| *name == &rest[..len]) {
            Some((_, value)) => {
                out.push_str(value);
                rest = &rest[len..];
            }
            None => out.push('$'),
        }
    }
    out.push_str(rest);
    out
}

/// One bubble's layout: (rgb or None, speakers, cols_init, cols_end, ncols, width).
type Bubble = (Option<&'static str>, &'static str, &'static str, &'static str, &'static str, &'static str);

fn bubble(two_tracks: bool, class_name: &str) -> Option<Bubble> {
    Some(match (two_tracks, class_name) {
        (false, "player-gm") => (None, "$player_name$\\rangle$GM", "&", "& &", "4", "0.6"),
        (false, "gm-player") => (Some("0.9,0.9,0.9"), "$player_name$\\langle$GM", "& & &", "", "4", "0.6"),
        (false, "gm-gm") | (true, "gm-gm") => (Some("0.95,0.95,0.95"), "GM$|$GM", "& & &", "& &", "2", "0.3"),
        (true, "player-gm p1") => (Some("0.8,1,0.9"), "P1$\\rangle$GM", "&", "& &", "4", "0.6"),
        (true, "player-gm p2") => (Some("1,0.85,0.72"), "GM$\\langle$P2", "& & &", "", "4", "0.6"),
        (true, "gm-player p1") => (Some("0.9,0.9,0.9"), "P1$\\langle$GM", "& &", "&", "4", "0.6"),
        (true, "gm-player p2") => (Some("0.9,0.9,0.9"), "GM$\\rangle$P2", "& &", "&", "4", "0.6"),
        _ => return None,
    })
}

/// `build_tex(interactions)`.
pub fn build_tex(interactions: &Value) -> Result<String, TexError> {
    let err = |m: &str| TexError(format!("interactions.json: {m}"));
    let players = interactions.get("players").and_then(Value::as_object).ok_or_else(|| err("no \"players\" object"))?;
    // get_css_player_dict: GM -> gm, the others p1, p2, ... in order.
    let mut css: Vec<(&str, String)> = vec![("GM", "gm".into())];
    for (n, name) in (1..).zip(players.keys().filter(|k| k.as_str() != "GM")) {
        css.push((name, format!("p{n}")));
    }
    let css_of = |who: &str| css.iter().rev().find(|(name, _)| *name == who).map(|(_, c)| c.clone());
    let two_tracks = players.len() == 3;
    let meta = interactions.get("meta").ok_or_else(|| err("no \"meta\""))?;
    let field = |key: &str| meta.get(key).map(py_str).ok_or_else(|| err(&format!("meta has no {key:?}")));
    let pair = match meta.get("results_folder") {
        Some(v) => py_str(v),
        None => field("dialogue_pair")?,
    };
    let title = escape_latex(&format!(
        "Interaction Transcript for game `{}', experiment `{}', episode {} with {pair}.",
        field("game_name")?,
        field("experiment_name")?,
        field("game_id")?,
    ));
    let column_header = if two_tracks { TWO_TRACKS_HEADER } else { ONE_TRACK_HEADER };
    let mut tex = HEADER.replace("$title", &title).replace("$column_header", column_header);
    let turns = interactions.get("turns").and_then(Value::as_array).ok_or_else(|| err("no \"turns\" list"))?;
    for turn in turns {
        let events = turn.as_array().ok_or_else(|| err("a round of \"turns\" is not a list"))?;
        for event in events {
            let who = |key: &str| -> Result<Option<String>, TexError> {
                let name =
                    event.get(key).and_then(Value::as_str).ok_or_else(|| err(&format!("an event has no {key:?}")))?;
                if name == "GM" {
                    return Ok(None);
                }
                css_of(name).map(Some).ok_or_else(|| err(&format!("event {key} {name:?} is not a player")))
            };
            let (from, to) = (who("from")?, who("to")?);
            let player = to.clone().or_else(|| from.clone());
            let mut class_name = format!(
                "{}-{}",
                if from.is_some() { "player" } else { "gm" },
                if to.is_some() { "player" } else { "gm" }
            );
            let mut player = player;
            if two_tracks && player.is_some() {
                class_name = format!("{class_name} {}", player.clone().unwrap_or_default());
            } else if let Some(p) = &player {
                player = Some(p.to_uppercase());
            }
            let content = event.pointer("/action/content").ok_or_else(|| err("an event has no action content"))?;
            let msg = match content {
                Value::String(s) => {
                    let mut m = String::new();
                    for line in py_splitlines(s) {
                        if line.chars().all(py_isspace) {
                            m.push_str("\\\\ \n");
                        } else {
                            m.push_str("\\texttt{");
                            m.push_str(&escape_latex(line));
                            m.push_str("} \\\\\n");
                        }
                    }
                    m.pop();
                    m
                }
                other => py_repr(other),
            };
            let (rgb, speakers, cols_init, cols_end, ncols, width) =
                bubble(two_tracks, &class_name).ok_or_else(|| err(&format!("no bubble for a {class_name} event")))?;
            let speakers = if two_tracks {
                speakers.to_string()
            } else {
                speakers.replace("$player_name", player.as_deref().unwrap_or(""))
            };
            let rgb = match (rgb, &player) {
                (None, Some(p)) => {
                    let n: i64 = p.get(1..).and_then(|d| d.parse().ok()).unwrap_or(0);
                    let i = if n - 1 < 0 { n - 1 + COLORS.len() as i64 } else { n - 1 };
                    *usize::try_from(i)
                        .ok()
                        .and_then(|i| COLORS.get(i))
                        .ok_or_else(|| err("more players than colours"))?
                }
                _ if class_name.contains("gm") => "0.9,0.9,0.9",
                _ => "0.95,0.95,0.95",
            };
            tex.push_str(&substitute(
                EVENT,
                &[
                    ("cols_init", cols_init),
                    ("rgb", rgb),
                    ("speakers", &speakers),
                    ("msg", &msg),
                    ("cols_end", cols_end),
                    ("ncols", ncols),
                    ("width", width),
                ],
            ));
        }
    }
    tex.push_str(FOOTER);
    Ok(tex)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn python_text_helpers() {
        assert_eq!(py_splitlines("a\r\nb\n\nc\u{2028}d\n"), ["a", "b", "", "c", "d"]);
        assert_eq!(py_splitlines(""), Vec::<&str>::new());
        assert_eq!(
            escape_latex("50% of $x_1 {a} [b] ~ ^ \\ -"),
            "50\\% of \\$x\\_1 \\{a\\} {[}b{]} \\textasciitilde{} \\^{} \\textbackslash{} {-}"
        );
        assert_eq!(
            py_repr(&json!({"a": [1, 2.5, true, null], "b": "it's"})),
            "{'a': [1, 2.5, True, None], 'b': \"it's\"}"
        );
        assert_eq!(substitute("$a-$b", &[("a", "$b"), ("b", "B")]), "$b-B", "values are not substituted again");
    }

    #[test]
    fn refuses_what_clemcore_cannot_render() {
        let base = json!({"meta": {"game_name": "g", "experiment_name": "e", "game_id": 0, "results_folder": "m"},
                          "players": {"GM": {}, "Player 1": {}}, "turns": [[]]});
        assert!(build_tex(&base).is_ok());
        let mut bad = base.clone();
        bad["turns"] = json!([[{"from": "Player 9", "to": "GM", "action": {"content": "x"}}]]);
        assert!(build_tex(&bad).is_err());
        let mut bad = base;
        bad["meta"] = json!({});
        assert!(build_tex(&bad).expect_err("no meta").to_string().contains("meta has no \"dialogue_pair\""));
    }
}
