//! Hugging Face chat templates rendered as transformers renders them (jinja2 sandbox, trim_blocks,
//! lstrip_blocks, loopcontrols, `raise_exception`, `strftime_now`, a non-escaping `tojson`, `{% generation %}`).
//!
//! transformers compiles a chat template with
//! `ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[AssistantTracker,
//! loopcontrols])`, adds a `tojson` filter that is plain `json.dumps` (no HTML escaping, Python's
//! `", "`/`": "` separators), the globals `raise_exception` and `strftime_now`, and renders with
//! `messages`, `tools=None`, `documents=None`, `add_generation_prompt`, the special tokens and any
//! extra keyword arguments. This module reproduces that on minijinja:
//!
//! - values print as Python's `str()` does: `True`, `None`, `1.0`, `1e+20`, `['a', None]`, `{'a': 1}`;
//! - `tojson` follows `json.dumps` (`ensure_ascii`, `indent`, `separators`, `sort_keys`);
//! - the filters `trim`, `string`, `join`, `int`, `float`, `escape`/`e`, `center`, `truncate`,
//!   `wordcount` and the tests `sequence`/`iterable` follow jinja2 where minijinja differs; the
//!   str methods `strip`, `lstrip`, `rstrip`, `split`, `rsplit`, `splitlines` and `title` follow
//!   Python exactly, the other Python methods come from `minijinja_contrib::pycompat`;
//! - `{% generation %}`/`{% endgeneration %}` (transformers' assistant-mask tag, a call block that
//!   renders its body) is rewritten before compiling into `{% with %}`/`{% endwith %}`, which renders
//!   the body with the same scoping, the same whitespace-control markers and on the same lines;
//! - errors name the model and the template line; `raise_exception('...')` keeps the template's own
//!   message.
//!
//! Known differences from jinja2 (none shows in the chat templates we know of; the goldens in
//! `tests/goldens` pin everything else byte for byte):
//! - `~` (and `%s` in `format`) print floats below 1e-4 or from 1e16 on as minijinja does
//!   (`100000000000000000000.0` where Python prints `1e+20`); `{{ }}`, `string`, `join` are exact;
//! - a dict key named like a dict method (`x.items` on a dict with an `items` key) gives the key,
//!   where jinja2 gives the bound method; printing `range(3)`, a namespace or a generator prints
//!   its items (`[0, 1, 2]`, `{'a': 1}`) where Python prints `range(0, 3)`, `<Namespace ...>`, ...;
//! - the filters `striptags`, `wordwrap`, `filesizeformat`, `forceescape`, `random`, `urlize`,
//!   `xmlattr` do not exist, and an unknown filter fails at render time, not at compile time;
//! - errors other than `raise_exception` (undefined attribute, `'a' + 1`, ...) fail as in jinja2
//!   but with minijinja's wording.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;
use std::fmt::Write as _;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{from_args, Kwargs, Rest, ValueKind};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, Output, State, UndefinedBehavior, Value};
use serde_json::{Map, Value as Json};

/// The name the one template of a [`ChatTemplate`]'s environment is stored under.
const TEMPLATE_NAME: &str = "chat_template";

/// Containers nested deeper than this are not printed or serialised (a namespace can contain itself).
const MAX_DEPTH: usize = 256;

/// A compiled chat template.
#[derive(Clone)]
pub struct ChatTemplate {
    name: String,
    source: String,
    env: Environment<'static>,
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatTemplate").field("name", &self.name).field("source", &self.source).finish()
    }
}

/// Options for one rendering.
#[derive(Clone, Debug, Default)]
pub struct RenderOptions {
    pub add_generation_prompt: bool,
    /// Special tokens and any other template variables (`bos_token`, `eos_token`, `tools`, ...).
    pub variables: Map<String, Json>,
    /// The clock `strftime_now` reads; `None` for the real clock.
    pub now: Option<chrono::NaiveDateTime>,
}

/// A template that does not compile or failed while rendering.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
#[error("chat template of {name}{}: {message}", line.map(|l| format!(", line {l}")).unwrap_or_default())]
pub struct TemplateError {
    pub name: String,
    pub line: Option<usize>,
    pub message: String,
}

impl ChatTemplate {
    /// Compiles `source` (the template of model `name`); syntax errors carry the template line.
    pub fn new(source: &str, name: &str) -> Result<ChatTemplate, TemplateError> {
        let env = build_environment(rewrite_generation_tags(source)).map_err(|e| template_error(name, &e))?;
        Ok(ChatTemplate { name: name.into(), source: source.into(), env })
    }

    /// The template as given (before the `{% generation %}` rewrite).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The model name errors are reported under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Renders `messages` (a JSON list of message objects) as transformers'
    /// `apply_chat_template(..., tokenize=False)` does.
    pub fn render(&self, messages: &Json, opts: &RenderOptions) -> Result<String, TemplateError> {
        let mut ctx: BTreeMap<String, Value> = BTreeMap::new();
        ctx.insert("tools".into(), Value::from(()));
        ctx.insert("documents".into(), Value::from(()));
        let too_deep = |_| TemplateError {
            name: self.name.clone(),
            line: None,
            message: format!("template variables nested deeper than {MAX_DEPTH} levels"),
        };
        for (key, value) in &opts.variables {
            ctx.insert(key.clone(), json_to_value(value, 0).map_err(too_deep)?);
        }
        ctx.insert("messages".into(), json_to_value(messages, 0).map_err(too_deep)?);
        ctx.insert("add_generation_prompt".into(), Value::from(opts.add_generation_prompt));

        let _clock = ClockGuard::set(opts.now);
        self.env
            .get_template(TEMPLATE_NAME)
            .and_then(|t| t.render(Value::from(ctx)))
            .map_err(|e| template_error(&self.name, &e))
    }
}

/// A JSON value as a template value (as Python's `json.loads` would give it), order preserved.
fn json_to_value(json: &Json, depth: usize) -> Result<Value, ()> {
    if depth > MAX_DEPTH {
        return Err(());
    }
    Ok(match json {
        Json::Null => Value::from(()),
        Json::Bool(b) => Value::from(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Value::from(i),
            (None, Some(u), _) => Value::from(u),
            (None, None, Some(f)) => Value::from(f),
            (None, None, None) => Value::from(n.to_string()),
        },
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(items) => {
            Value::from(items.iter().map(|i| json_to_value(i, depth + 1)).collect::<Result<Vec<_>, _>>()?)
        }
        Json::Object(map) => Value::from_pairs(
            map.iter()
                .map(|(k, v)| Ok((Value::from(k.as_str()), json_to_value(v, depth + 1)?)))
                .collect::<Result<Vec<_>, ()>>()?,
        ),
    })
}

/// The environment transformers' `_compile_jinja_template` builds, holding the one template.
fn build_environment(source: String) -> Result<Environment<'static>, Error> {
    let mut env = Environment::new();
    env.set_syntax(SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).keep_trailing_newline(false).build()?);
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_formatter(python_formatter);
    env.set_unknown_method_callback(python_method);
    env.add_filter("tojson", tojson);
    env.add_filter("trim", trim_filter);
    env.add_filter("string", string_filter);
    env.add_filter("join", join_filter);
    env.add_filter("int", int_filter);
    env.add_filter("float", float_filter);
    env.add_filter("center", center_filter);
    env.add_filter("truncate", truncate_filter);
    env.add_filter("wordcount", wordcount_filter);
    env.add_filter("escape", escape_filter);
    env.add_filter("e", escape_filter);
    env.add_test("sequence", is_sequence);
    env.add_test("iterable", is_iterable);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env.add_template_owned(TEMPLATE_NAME, source)?;
    Ok(env)
}

/// Marks an error as raised by the template's own `raise_exception(...)`.
#[derive(Debug)]
struct RaisedException(String);

impl fmt::Display for RaisedException {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedException {}

fn template_error(name: &str, err: &Error) -> TemplateError {
    let mut raised = None;
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(e) = source {
        if let Some(r) = e.downcast_ref::<RaisedException>() {
            raised = Some(r.0.clone());
            break;
        }
        source = e.source();
    }
    let message = raised.unwrap_or_else(|| match err.detail() {
        Some(detail) => format!("{}: {detail}", err.kind()),
        None => err.kind().to_string(),
    });
    TemplateError { name: name.into(), line: err.line(), message }
}

// ------------------------------------------------------------------------------------------------
// `{% generation %}`
// ------------------------------------------------------------------------------------------------

/// Rewrites transformers' `{% generation %}` ... `{% endgeneration %}` into `{% with %}` ...
/// `{% endwith %}` (a scope rendering its body, like jinja2's call block), keeping the markers
/// (`{%- generation -%}`) and every newline. Strings, comments and raw blocks are left alone.
fn rewrite_generation_tags(src: &str) -> String {
    let bytes = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut copied = 0;
    let mut i = 0;
    while i + 1 < bytes.len() {
        if bytes[i] != b'{' {
            i += 1;
            continue;
        }
        match bytes[i + 1] {
            b'#' => i = find_from(src, i + 2, "#}").map_or(bytes.len(), |p| p + 2),
            b'{' => i = skip_tag(src, i + 2, "}}"),
            b'%' => {
                let (name_start, name_end) = block_name(src, i + 2);
                match &src[name_start..name_end] {
                    name @ ("generation" | "endgeneration") if closes_bare(src, name_end) => {
                        out.push_str(&src[copied..name_start]);
                        out.push_str(if name == "generation" { "with" } else { "endwith" });
                        copied = name_end;
                        i = skip_tag(src, name_end, "%}");
                    }
                    "raw" => i = skip_raw(src, skip_tag(src, name_end, "%}")),
                    _ => i = skip_tag(src, name_end, "%}"),
                }
            }
            _ => i += 1,
        }
    }
    out.push_str(&src[copied..]);
    out
}

fn find_from(src: &str, from: usize, needle: &str) -> Option<usize> {
    src.get(from..).and_then(|rest| rest.find(needle)).map(|p| p + from)
}

/// The byte range of a block tag's name, `pos` being just after `{%`.
fn block_name(src: &str, pos: usize) -> (usize, usize) {
    let bytes = src.as_bytes();
    let mut i = pos;
    if i < bytes.len() && matches!(bytes[i], b'-' | b'+') {
        i += 1;
    }
    while i < bytes.len() && bytes[i].is_ascii_whitespace() {
        i += 1;
    }
    let start = i;
    while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
        i += 1;
    }
    (start, i)
}

/// Whether only whitespace and an optional `-`/`+` separate `pos` from `%}`.
fn closes_bare(src: &str, pos: usize) -> bool {
    let rest = src.get(pos..).unwrap_or("").trim_start_matches(|c: char| c.is_ascii_whitespace());
    let rest = rest.strip_prefix(['-', '+']).unwrap_or(rest);
    rest.starts_with("%}")
}

/// The position after the end marker of a tag, skipping string literals; `pos` is inside the tag.
fn skip_tag(src: &str, pos: usize, end: &str) -> usize {
    let bytes = src.as_bytes();
    let end = end.as_bytes();
    let mut i = pos;
    let mut quote: Option<u8> = None;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(q) => {
                if b == b'\\' {
                    i += 1;
                } else if b == q {
                    quote = None;
                }
            }
            None => {
                if b == b'\'' || b == b'"' {
                    quote = Some(b);
                } else if bytes[i..].starts_with(end) {
                    return i + end.len();
                }
            }
        }
        i += 1;
    }
    bytes.len()
}

/// The position after the `{% endraw %}` that closes a raw block whose body starts at `pos`.
fn skip_raw(src: &str, pos: usize) -> usize {
    let mut from = pos;
    while let Some(p) = find_from(src, from, "{%") {
        let (start, end) = block_name(src, p + 2);
        if &src[start..end] == "endraw" {
            return skip_tag(src, end, "%}");
        }
        from = p + 2;
    }
    src.len()
}

// ------------------------------------------------------------------------------------------------
// Python printing: str() and repr()
// ------------------------------------------------------------------------------------------------

fn python_formatter(out: &mut Output, _state: &mut State, value: &Value) -> Result<(), Error> {
    let text = py_str(value);
    out.write_str(&text).map_err(|_| Error::new(ErrorKind::WriteFailure, "cannot write output"))
}

/// Python's `str(value)` (an undefined value prints as nothing, as jinja2's `Undefined`).
fn py_str(value: &Value) -> String {
    match value.kind() {
        ValueKind::String => value.as_str().unwrap_or_default().to_string(),
        ValueKind::Undefined => String::new(),
        _ => {
            let mut out = String::new();
            py_repr(value, &mut out, 0);
            out
        }
    }
}

/// Python's `repr(value)`.
fn py_repr(value: &Value, out: &mut String, depth: usize) {
    if depth > MAX_DEPTH {
        out.push_str("...");
        return;
    }
    match value.kind() {
        ValueKind::Undefined => out.push_str("Undefined"),
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number => out.push_str(&py_number(value)),
        ValueKind::String => py_repr_str(value.as_str().unwrap_or_default(), out),
        ValueKind::Seq | ValueKind::Iterable => {
            let tuple = value.is_tuple();
            out.push(if tuple { '(' } else { '[' });
            let mut n = 0;
            if let Ok(items) = value.try_iter() {
                for item in items {
                    if n > 0 {
                        out.push_str(", ");
                    }
                    py_repr(&item, out, depth + 1);
                    n += 1;
                }
            }
            if tuple && n == 1 {
                out.push(',');
            }
            out.push(if tuple { ')' } else { ']' });
        }
        ValueKind::Map => {
            out.push('{');
            if let Some(pairs) = value.as_object().and_then(|o| o.try_iter_pairs()) {
                for (n, (key, item)) in pairs.enumerate() {
                    if n > 0 {
                        out.push_str(", ");
                    }
                    py_repr(&key, out, depth + 1);
                    out.push_str(": ");
                    py_repr(&item, out, depth + 1);
                }
            }
            out.push('}');
        }
        _ => {
            let _ = write!(out, "{value}");
        }
    }
}

/// A number as Python prints it: integers exactly, floats as `float.__repr__`.
fn py_number(value: &Value) -> String {
    if value.is_integer() {
        return value.to_string();
    }
    match f64::try_from(value.clone()) {
        Ok(f) => py_float_repr(f),
        Err(_) => value.to_string(),
    }
}

/// Python's `repr(float)`: the shortest round-tripping digits, in positional notation when the
/// decimal exponent is in -4..16 (`0.0001`, `1e-05`, `1e+16`, `1.0`), else `d.ddde±XX`.
fn py_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f < 0.0 { "-inf".into() } else { "inf".into() };
    }
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if f.is_sign_negative() { "-" } else { "" };
    let ndigits = digits.len() as i32;
    if (-4..16).contains(&exp) {
        let decpt = exp + 1;
        if decpt <= 0 {
            format!("{sign}0.{}{digits}", "0".repeat((-decpt) as usize))
        } else if decpt >= ndigits {
            format!("{sign}{digits}{}.0", "0".repeat((decpt - ndigits) as usize))
        } else {
            let (int, frac) = digits.split_at(decpt as usize);
            format!("{sign}{int}.{frac}")
        }
    } else {
        let (first, rest) = digits.split_at(1.min(digits.len()));
        let frac = if rest.is_empty() { String::new() } else { format!(".{rest}") };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{first}{frac}e{esign}{:02}", exp.abs())
    }
}

/// Python's `repr(str)`.
fn py_repr_str(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
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
            c if !py_isprintable(c) => {
                let cp = c as u32;
                let _ = if cp <= 0xff {
                    write!(out, "\\x{cp:02x}")
                } else if cp <= 0xffff {
                    write!(out, "\\u{cp:04x}")
                } else {
                    write!(out, "\\U{cp:08x}")
                };
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// Python's `str.isprintable()` for one character: not a control, format, separator (but space),
/// surrogate, private-use or noncharacter code point (unassigned code points are not known here).
fn py_isprintable(c: char) -> bool {
    let cp = c as u32;
    if c == ' ' {
        return true;
    }
    if c.is_control() || c.is_whitespace() {
        return false;
    }
    !matches!(cp,
        0xad | 0x600..=0x605 | 0x61c | 0x6dd | 0x70f | 0x890..=0x891 | 0x8e2 | 0x180e
        | 0x200b..=0x200f | 0x202a..=0x202e | 0x2060..=0x2064 | 0x2066..=0x206f
        | 0xd800..=0xf8ff | 0xfdd0..=0xfdef | 0xfeff | 0xfff9..=0xfffb | 0xfffe..=0xffff
        | 0x110bd | 0x110cd | 0x13430..=0x1343f | 0x1bca0..=0x1bca3 | 0x1d173..=0x1d17a
        | 0xe0001 | 0xe0020..=0xe007f | 0xf0000..=0x10ffff)
        && (cp & 0xfffe) != 0xfffe
}

// ------------------------------------------------------------------------------------------------
// Python str semantics
// ------------------------------------------------------------------------------------------------

/// Python's `str.isspace()` for one character.
fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip`/`lstrip`/`rstrip` with `chars` (None: whitespace).
fn py_strip<'a>(s: &'a str, chars: Option<&str>, left: bool, right: bool) -> &'a str {
    let strip = |c: char| match chars {
        Some(chars) => chars.contains(c),
        None => py_isspace(c),
    };
    let s = if left { s.trim_start_matches(strip) } else { s };
    if right {
        s.trim_end_matches(strip)
    } else {
        s
    }
}

/// Python's `str.split(sep, maxsplit)` (`rsplit` when `from_right`).
fn py_split(s: &str, sep: Option<&str>, maxsplit: i64, from_right: bool) -> Result<Vec<String>, Error> {
    let limit = usize::try_from(maxsplit).ok();
    match sep {
        Some("") => Err(Error::new(ErrorKind::InvalidOperation, "empty separator")),
        Some(sep) => Ok(match (limit, from_right) {
            (None, _) => s.split(sep).map(String::from).collect(),
            (Some(n), false) => s.splitn(n + 1, sep).map(String::from).collect(),
            (Some(n), true) => {
                let mut parts: Vec<String> = s.rsplitn(n + 1, sep).map(String::from).collect();
                parts.reverse();
                parts
            }
        }),
        None => {
            let chars: Vec<char> = if from_right { s.chars().rev().collect() } else { s.chars().collect() };
            let mut parts: Vec<String> = Vec::new();
            let mut i = 0;
            loop {
                while i < chars.len() && py_isspace(chars[i]) {
                    i += 1;
                }
                if i >= chars.len() {
                    break;
                }
                if limit.is_some_and(|n| parts.len() >= n) {
                    let rest: String = chars[i..].iter().collect();
                    let rest = if from_right { py_strip(&rest, None, false, true) } else { &rest };
                    parts.push(rest.to_string());
                    break;
                }
                let start = i;
                while i < chars.len() && !py_isspace(chars[i]) {
                    i += 1;
                }
                parts.push(chars[start..i].iter().collect());
            }
            if from_right {
                parts.reverse();
                for part in &mut parts {
                    *part = part.chars().rev().collect();
                }
            }
            Ok(parts)
        }
    }
}

/// Python's `str.splitlines(keepends)`.
fn py_splitlines(s: &str, keepends: bool) -> Vec<String> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut iter = s.char_indices().peekable();
    while let Some((i, c)) = iter.next() {
        let is_break = matches!(
            c,
            '\n' | '\r' | '\u{0b}' | '\u{0c}' | '\u{1c}' | '\u{1d}' | '\u{1e}' | '\u{85}' | '\u{2028}' | '\u{2029}'
        );
        if !is_break {
            continue;
        }
        let mut end = i + c.len_utf8();
        if c == '\r' {
            if let Some(&(_, '\n')) = iter.peek() {
                iter.next();
                end += 1;
            }
        }
        lines.push(s[start..if keepends { end } else { i }].to_string());
        start = end;
    }
    if start < s.len() {
        lines.push(s[start..].to_string());
    }
    lines
}

/// Python's `str.title()`: a cased character after a cased one is lowered, any other is title-cased.
fn py_title(s: &str) -> String {
    let is_cased = |c: char| c.is_lowercase() || c.is_uppercase();
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut previous_is_cased = false;
    for (i, &c) in chars.iter().enumerate() {
        if previous_is_cased {
            if c == 'Σ' {
                let final_sigma = !chars.get(i + 1).is_some_and(|&n| is_cased(n));
                out.push(if final_sigma { 'ς' } else { 'σ' });
            } else {
                out.extend(c.to_lowercase());
            }
        } else {
            match c {
                'Ǆ' | 'ǅ' | 'ǆ' => out.push('ǅ'),
                'Ǉ' | 'ǈ' | 'ǉ' => out.push('ǈ'),
                'Ǌ' | 'ǋ' | 'ǌ' => out.push('ǋ'),
                'Ǳ' | 'ǲ' | 'ǳ' => out.push('ǲ'),
                c => out.extend(c.to_uppercase()),
            }
        }
        previous_is_cased = is_cased(c);
    }
    out
}

/// An optional string argument (`None`/`none` meaning absent).
fn opt_str(value: Option<&Value>) -> Result<Option<&str>, Error> {
    match value {
        None => Ok(None),
        Some(v) if v.is_none() || v.is_undefined() => Ok(None),
        Some(v) => match v.kind() {
            ValueKind::String => Ok(v.as_str()),
            kind => Err(Error::new(ErrorKind::InvalidOperation, format!("expected a string or None, not {kind}"))),
        },
    }
}

/// Python str methods; the ones minijinja-contrib's pycompat does not do exactly are done here.
fn python_method(state: &mut State, value: &Value, method: &str, args: &[Value]) -> Result<Value, Error> {
    if value.kind() == ValueKind::String {
        let s = value.as_str().unwrap_or_default();
        match method {
            "strip" | "lstrip" | "rstrip" => {
                let (chars,): (Option<Value>,) = from_args(args)?;
                let chars = opt_str(chars.as_ref())?;
                return Ok(Value::from(py_strip(s, chars, method != "rstrip", method != "lstrip")));
            }
            "split" | "rsplit" => {
                let (sep, maxsplit, kwargs): (Option<Value>, Option<i64>, Kwargs) = from_args(args)?;
                let sep_kw: Option<Value> = kwargs.get("sep")?;
                let maxsplit_kw: Option<i64> = kwargs.get("maxsplit")?;
                kwargs.assert_all_used()?;
                let sep = sep.or(sep_kw);
                let sep = opt_str(sep.as_ref())?;
                let maxsplit = maxsplit.or(maxsplit_kw).unwrap_or(-1);
                let parts = py_split(s, sep, maxsplit, method == "rsplit")?;
                return Ok(Value::from(parts));
            }
            "splitlines" => {
                let (keepends, kwargs): (Option<bool>, Kwargs) = from_args(args)?;
                let keepends_kw: Option<bool> = kwargs.get("keepends")?;
                kwargs.assert_all_used()?;
                return Ok(Value::from(py_splitlines(s, keepends.or(keepends_kw).unwrap_or(false))));
            }
            "title" => {
                let () = from_args(args)?;
                return Ok(Value::from(py_title(s)));
            }
            _ => {}
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

// ------------------------------------------------------------------------------------------------
// Filters, tests and globals
// ------------------------------------------------------------------------------------------------

/// Binds a Python function's positional-or-keyword parameters `names` from `args` and `kwargs`;
/// a parameter passed as `None` counts as not passed (every default here is `None` or falsy).
fn py_params<const N: usize>(
    function: &str,
    names: [&str; N],
    args: &[Value],
    kwargs: &Kwargs,
) -> Result<[Option<Value>; N], Error> {
    if args.len() > N {
        return Err(Error::new(
            ErrorKind::TooManyArguments,
            format!("{function} takes at most {N} arguments ({} given)", args.len()),
        ));
    }
    let mut params: [Option<Value>; N] = std::array::from_fn(|i| args.get(i).cloned());
    for (slot, name) in params.iter_mut().zip(names) {
        if let Some(v) = kwargs.get::<Option<Value>>(name)? {
            if slot.is_some() {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("{function} got multiple values for argument '{name}'"),
                ));
            }
            *slot = Some(v);
        }
    }
    kwargs.assert_all_used()?;
    Ok(params.map(|p| p.filter(|v| !v.is_none())))
}

/// jinja2's `center(width=80)`: Python's `str.center`.
fn center_filter(value: &Value, width: Option<i64>) -> String {
    let s = py_str(value);
    let len = s.chars().count() as i64;
    let width = width.unwrap_or(80);
    let marg = width - len;
    if marg <= 0 {
        return s;
    }
    let left = marg / 2 + (marg & width & 1);
    let pad = |n: i64| " ".repeat(usize::try_from(n).unwrap_or(0));
    format!("{}{s}{}", pad(left), pad(marg - left))
}

/// jinja2's `truncate(length=255, killwords=False, end='...', leeway=5)`.
fn truncate_filter(value: &Value, args: Rest<Value>, kwargs: Kwargs) -> Result<String, Error> {
    let [length, killwords, end, leeway] =
        py_params("truncate", ["length", "killwords", "end", "leeway"], &args, &kwargs)?;
    let int = |v: Option<Value>, default: i64| match v {
        None => Ok(default),
        Some(v) => {
            v.as_i64().ok_or_else(|| Error::new(ErrorKind::InvalidOperation, "truncate: an integer is required"))
        }
    };
    let length = int(length, 255)?;
    let leeway = int(leeway, 5)?;
    let end = end.map(|e| py_str(&e)).unwrap_or_else(|| "...".into());
    let end_len = end.chars().count() as i64;
    if length < end_len || leeway < 0 {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "truncate: length must not be shorter than end, leeway not negative",
        ));
    }
    let s = py_str(value);
    let chars: Vec<char> = s.chars().collect();
    if chars.len() as i64 <= length + leeway {
        return Ok(s);
    }
    let head: String = chars[..usize::try_from(length - end_len).unwrap_or(0)].iter().collect();
    if killwords.is_some_and(|k| k.is_true()) {
        return Ok(head + &end);
    }
    let head = head.rsplit_once(' ').map_or(head.as_str(), |(h, _)| h);
    Ok(format!("{head}{end}"))
}

/// jinja2's `wordcount`: the number of `\w+` runs.
fn wordcount_filter(value: &Value) -> usize {
    let s = py_str(value);
    s.split(|c: char| !(c.is_alphanumeric() || c == '_')).filter(|w| !w.is_empty()).count()
}

/// jinja2's `trim`: `str(value).strip(chars)`.
fn trim_filter(value: &Value, chars: Option<Value>) -> Result<Value, Error> {
    let s = py_str(value);
    let chars = opt_str(chars.as_ref())?;
    Ok(Value::from(py_strip(&s, chars, true, true)))
}

/// jinja2's `string`: `str(value)`, strings (and safe strings) unchanged.
fn string_filter(value: &Value) -> Value {
    if value.kind() == ValueKind::String {
        value.clone()
    } else {
        Value::from(py_str(value))
    }
}

/// jinja2's `join(d='', attribute=None)`: items printed with `str()`.
fn join_filter(value: &Value, d: Option<Value>, kwargs: Kwargs) -> Result<String, Error> {
    let d_kw: Option<Value> = kwargs.get("d")?;
    let attribute: Option<Value> = kwargs.get("attribute")?;
    kwargs.assert_all_used()?;
    let sep = d.or(d_kw).map(|d| py_str(&d)).unwrap_or_default();
    let mut out = String::new();
    for (n, item) in value.try_iter()?.enumerate() {
        if n > 0 {
            out.push_str(&sep);
        }
        let item = match &attribute {
            Some(attr) => lookup_path(&item, attr)?,
            None => item,
        };
        out.push_str(&py_str(&item));
    }
    Ok(out)
}

/// jinja2's attribute getter: a dotted path whose all-digit parts are integer indexes.
fn lookup_path(item: &Value, path: &Value) -> Result<Value, Error> {
    let Some(path) = path.as_str() else {
        return item.get_item(path);
    };
    let mut current = item.clone();
    for part in path.split('.') {
        let key = match part.parse::<i64>() {
            Ok(index) if part.bytes().all(|b| b.is_ascii_digit()) => Value::from(index),
            _ => Value::from(part),
        };
        current = current.get_item(&key)?;
    }
    Ok(current)
}

/// A string argument of `int`/`float` as Python's `int()`/`float()` read it (surrounding whitespace ignored).
fn numeric_input(value: &Value) -> Value {
    match value.kind() {
        ValueKind::String => Value::from(py_strip(value.as_str().unwrap_or_default(), None, true, true)),
        _ => value.clone(),
    }
}

fn no_kwargs() -> Kwargs {
    Kwargs::from_iter(std::iter::empty::<(&str, Value)>())
}

/// jinja2's `int(default=0, base=10)`: anything that does not convert gives the default.
fn int_filter(
    state: &State,
    value: &Value,
    default: Option<Value>,
    base: Option<u32>,
    kwargs: Kwargs,
) -> Result<Value, Error> {
    let default = match default {
        Some(default) => default,
        None => kwargs.get::<Option<Value>>("default")?.unwrap_or(Value::from(0)),
    };
    let base = match base {
        Some(base) => base,
        None => kwargs.get::<Option<u32>>("base")?.unwrap_or(10),
    };
    kwargs.assert_all_used()?;
    let value = numeric_input(value);
    Ok(minijinja::filters::int(state, &value, Some(default.clone()), Some(base), no_kwargs()).unwrap_or(default))
}

/// jinja2's `float(default=0.0)`: anything that does not convert gives the default.
fn float_filter(state: &State, value: &Value, default: Option<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let default = match default {
        Some(default) => default,
        None => kwargs.get::<Option<Value>>("default")?.unwrap_or(Value::from(0.0)),
    };
    kwargs.assert_all_used()?;
    let value = numeric_input(value);
    Ok(minijinja::filters::float(state, &value, Some(default.clone()), no_kwargs()).unwrap_or(default))
}

/// markupsafe's `escape` as jinja2 uses it: `&<>"'` to `&amp;`, `&lt;`, `&gt;`, `&#34;`, `&#39;`.
fn escape_filter(value: &Value) -> Value {
    if value.is_safe() {
        return value.clone();
    }
    let s = py_str(value);
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    Value::from_safe_string(out)
}

/// jinja2's `sequence` test: anything with a length and items (strings and dicts too).
fn is_sequence(value: &Value) -> bool {
    matches!(value.kind(), ValueKind::Undefined | ValueKind::String | ValueKind::Seq | ValueKind::Map)
}

/// jinja2's `iterable` test: `iter(value)` works (strings, dicts, undefined; not None).
fn is_iterable(value: &Value) -> bool {
    matches!(
        value.kind(),
        ValueKind::Undefined
            | ValueKind::String
            | ValueKind::Bytes
            | ValueKind::Seq
            | ValueKind::Map
            | ValueKind::Iterable
    )
}

/// transformers' `raise_exception(message)`: fails the rendering with the template's message.
fn raise_exception(message: Value) -> Result<Value, Error> {
    let message = py_str(&message);
    Err(Error::new(ErrorKind::InvalidOperation, message.clone()).with_source(RaisedException(message)))
}

thread_local! {
    /// The clock of the rendering in progress on this thread (`RenderOptions::now`).
    static NOW: Cell<Option<chrono::NaiveDateTime>> = const { Cell::new(None) };
}

/// Sets [`NOW`] for one rendering and restores the previous value afterwards.
struct ClockGuard(Option<chrono::NaiveDateTime>);

impl ClockGuard {
    fn set(now: Option<chrono::NaiveDateTime>) -> ClockGuard {
        ClockGuard(NOW.with(|cell| cell.replace(now)))
    }
}

impl Drop for ClockGuard {
    fn drop(&mut self) {
        NOW.with(|cell| cell.set(self.0));
    }
}

/// transformers' `strftime_now(format)`: `datetime.now().strftime(format)`.
fn strftime_now(format: &str) -> Result<String, Error> {
    let now = NOW.with(Cell::get).unwrap_or_else(|| chrono::Local::now().naive_local());
    py_strftime(&now, format)
}

/// Python's `datetime.strftime` (glibc directives, C locale) for a naive datetime.
fn py_strftime(dt: &chrono::NaiveDateTime, format: &str) -> Result<String, Error> {
    // Translate to a chrono format string: chrono knows the glibc directives, Python itself
    // handles %f (microseconds) and %z/%Z (empty for a naive datetime), unknown ones stay as is.
    let mut chrono_fmt = String::with_capacity(format.len() + 8);
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            chrono_fmt.push(c);
            continue;
        }
        let flag = chars.next_if(|f| matches!(f, '-' | '_' | '0'));
        match chars.next() {
            None => {
                chrono_fmt.push_str("%%");
                if let Some(flag) = flag {
                    chrono_fmt.push(flag);
                }
            }
            Some('%') => chrono_fmt.push_str("%%"),
            Some('f') => chrono_fmt.push_str("%6f"),
            Some('z' | 'Z') => {}
            Some(d) if "aAbBcCdDeFgGhHIjklmMnpPrRsStTuUVwWxXyY".contains(d) => {
                chrono_fmt.push('%');
                if let Some(flag) = flag {
                    chrono_fmt.push(flag);
                }
                chrono_fmt.push(d);
            }
            Some(d) => {
                chrono_fmt.push_str("%%");
                if let Some(flag) = flag {
                    chrono_fmt.push(flag);
                }
                chrono_fmt.push(d);
            }
        }
    }
    let items: Vec<chrono::format::Item<'_>> = chrono::format::StrftimeItems::new(&chrono_fmt).collect();
    if items.iter().any(|i| matches!(i, chrono::format::Item::Error)) {
        return Err(Error::new(ErrorKind::InvalidOperation, format!("invalid strftime format {format:?}")));
    }
    let mut out = String::new();
    write!(out, "{}", dt.format_with_items(items.into_iter()))
        .map_err(|_| Error::new(ErrorKind::InvalidOperation, format!("cannot format the date with {format:?}")))?;
    Ok(out)
}

// ------------------------------------------------------------------------------------------------
// tojson: Python's json.dumps
// ------------------------------------------------------------------------------------------------

/// transformers' `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
fn tojson(value: &Value, args: Rest<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let params = py_params("tojson", ["ensure_ascii", "indent", "separators", "sort_keys"], &args, &kwargs)?;
    let [ensure_ascii, indent, separators, sort_keys] = params;

    let indent = match indent {
        None => None,
        Some(v) if v.kind() == ValueKind::String => Some(v.as_str().unwrap_or_default().to_string()),
        Some(v)
            if matches!(v.kind(), ValueKind::Number | ValueKind::Bool)
                && (v.is_integer() || v.kind() == ValueKind::Bool) =>
        {
            let n = if v.kind() == ValueKind::Bool { i64::from(v.is_true()) } else { v.as_i64().unwrap_or(0) };
            Some(" ".repeat(usize::try_from(n).unwrap_or(0).min(1024)))
        }
        Some(v) => {
            return Err(Error::new(ErrorKind::InvalidOperation, format!("tojson: invalid indent {}", py_str(&v))))
        }
    };
    let (item_sep, key_sep) = match separators {
        None => (if indent.is_some() { "," } else { ", " }.to_string(), ": ".to_string()),
        Some(v) => {
            let parts: Vec<Value> = v.try_iter().map(|i| i.collect()).unwrap_or_default();
            match parts.as_slice() {
                [a, b] if a.kind() == ValueKind::String && b.kind() == ValueKind::String => (py_str(a), py_str(b)),
                _ => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be an (item_separator, key_separator) pair of strings",
                    ))
                }
            }
        }
    };
    let dumper = JsonDumper {
        ensure_ascii: ensure_ascii.is_some_and(|v| v.is_true()),
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.is_some_and(|v| v.is_true()),
    };
    let mut out = String::new();
    dumper.dump(value, 0, &mut out)?;
    Ok(Value::from(out))
}

struct JsonDumper {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

impl JsonDumper {
    fn not_serializable(what: &str) -> Error {
        Error::new(ErrorKind::InvalidOperation, format!("Object of type {what} is not JSON serializable"))
    }

    fn newline(&self, level: usize, out: &mut String) {
        if let Some(indent) = &self.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(indent);
            }
        }
    }

    fn dump(&self, value: &Value, level: usize, out: &mut String) -> Result<(), Error> {
        if level > MAX_DEPTH {
            return Err(Error::new(ErrorKind::InvalidOperation, "Circular reference detected"));
        }
        match value.kind() {
            ValueKind::Undefined => return Err(Self::not_serializable("Undefined")),
            ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number => out.push_str(&json_number(value)),
            ValueKind::String => json_string(value.as_str().unwrap_or_default(), self.ensure_ascii, out),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = value.try_iter()?.collect();
                if items.is_empty() {
                    out.push_str("[]");
                    return Ok(());
                }
                out.push('[');
                for (n, item) in items.iter().enumerate() {
                    if n > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(level + 1, out);
                    self.dump(item, level + 1, out)?;
                }
                self.newline(level, out);
                out.push(']');
            }
            ValueKind::Map => {
                let mut pairs: Vec<(String, Value)> = Vec::new();
                if let Some(iter) = value.as_object().and_then(|o| o.try_iter_pairs()) {
                    for (key, item) in iter {
                        pairs.push((json_key(&key)?, item));
                    }
                }
                if pairs.is_empty() {
                    out.push_str("{}");
                    return Ok(());
                }
                if self.sort_keys {
                    pairs.sort_by(|a, b| a.0.cmp(&b.0));
                }
                out.push('{');
                for (n, (key, item)) in pairs.iter().enumerate() {
                    if n > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(level + 1, out);
                    json_string(key, self.ensure_ascii, out);
                    out.push_str(&self.key_sep);
                    self.dump(item, level + 1, out)?;
                }
                self.newline(level, out);
                out.push('}');
            }
            ValueKind::Bytes => return Err(Self::not_serializable("bytes")),
            kind => return Err(Self::not_serializable(&kind.to_string())),
        }
        Ok(())
    }
}

/// A number as `json.dumps` writes it (`NaN`, `Infinity`, floats as `float.__repr__`).
fn json_number(value: &Value) -> String {
    if !value.is_integer() {
        if let Ok(f) = f64::try_from(value.clone()) {
            if f.is_nan() {
                return "NaN".into();
            }
            if f.is_infinite() {
                return if f < 0.0 { "-Infinity".into() } else { "Infinity".into() };
            }
        }
    }
    py_number(value)
}

/// A dict key as `json.dumps` converts it.
fn json_key(key: &Value) -> Result<String, Error> {
    match key.kind() {
        ValueKind::String => Ok(key.as_str().unwrap_or_default().to_string()),
        ValueKind::Number => Ok(json_number(key)),
        ValueKind::Bool => Ok(if key.is_true() { "true" } else { "false" }.into()),
        ValueKind::None => Ok("null".into()),
        kind => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("keys must be str, int, float, bool or None, not {kind}"),
        )),
    }
}

/// A JSON string as `json.dumps` writes it.
fn json_string(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !(' '..='~').contains(&c)) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(source: &str, messages: Json, opts: &RenderOptions) -> Result<String, TemplateError> {
        ChatTemplate::new(source, "test-model")?.render(&messages, opts)
    }

    fn render_ok(source: &str) -> String {
        render(source, json!([{"role": "user", "content": "hi"}]), &RenderOptions::default()).expect("template renders")
    }

    #[test]
    fn tojson_does_not_escape_html_and_uses_python_separators() {
        assert_eq!(
            render_ok(r#"{{ {'a': "<b> & 'c'", 'n': [1, 2.0, none, true]} | tojson }}"#),
            r#"{"a": "<b> & 'c'", "n": [1, 2.0, null, true]}"#
        );
        assert_eq!(render_ok(r#"{{ 'Grüße 👋' | tojson }}"#), r#""Grüße 👋""#);
        assert_eq!(render_ok(r#"{{ 'Grüße 👋' | tojson(ensure_ascii=true) }}"#), r#""Gr\u00fc\u00dfe \ud83d\udc4b""#);
        assert_eq!(
            render_ok("{{ {'b': [1, 2], 'a': {}} | tojson(indent=2) }}"),
            "{\n  \"b\": [\n    1,\n    2\n  ],\n  \"a\": {}\n}"
        );
        assert_eq!(
            render_ok("{{ {'b': 1, 'a': 2} | tojson(sort_keys=true, separators=(',', ':')) }}"),
            r#"{"a":2,"b":1}"#
        );
        assert_eq!(render_ok("{{ messages[0].content | tojson }}"), r#""hi""#);
        let err =
            render("{{ nothing | tojson }}", json!([]), &RenderOptions::default()).expect_err("undefined is not JSON");
        assert!(err.message.contains("not JSON serializable"), "{err}");
    }

    #[test]
    fn raise_exception_keeps_the_template_message_and_line() {
        let source = "{% for m in messages %}\n{% if m.role == 'system' %}\n{{ raise_exception('System role not supported') }}\n{% endif %}\n{% endfor %}";
        let err = render(source, json!([{"role": "system", "content": "x"}]), &RenderOptions::default())
            .expect_err("raise_exception fails the rendering");
        assert_eq!(
            err,
            TemplateError { name: "test-model".into(), line: Some(3), message: "System role not supported".into() }
        );
        assert_eq!(err.to_string(), "chat template of test-model, line 3: System role not supported");
    }

    #[test]
    fn syntax_error_carries_its_line() {
        let err = ChatTemplate::new("{% for m in messages %}\n{{ m.content }}\n{% if %}\n{% endfor %}", "broken")
            .expect_err("syntax error");
        assert_eq!(err.name, "broken");
        assert_eq!(err.line, Some(3));
        assert!(err.message.starts_with("syntax error"), "{err}");
        let err = ChatTemplate::new("a\nb\n{% for m in messages %}", "broken").expect_err("unclosed for");
        assert!(err.line.is_some(), "{err}");
    }

    #[test]
    fn generation_block_renders_its_body_on_the_same_lines() {
        let source = "{% for m in messages %}\n{%- generation -%}\n  {{ m.content }}\n{%- endgeneration %}\n|{% endfor %}{% generation %}{{ undefined_fn() }}{% endgeneration %}";
        assert_eq!(rewrite_generation_tags(source).lines().count(), source.lines().count());
        assert!(
            rewrite_generation_tags("{{ '{% generation %}' }}{# {% generation %} #}").contains("'{% generation %}'")
        );
        let err = render(source, json!([{"role": "user", "content": "a"}]), &RenderOptions::default())
            .expect_err("undefined function");
        assert_eq!(err.line, Some(5));
        let ok = "{% for m in messages %}{%- generation -%} {{ m.content }} {%- endgeneration %}|{% endfor %}";
        assert_eq!(
            render(
                ok,
                json!([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]),
                &RenderOptions::default()
            )
            .expect("renders"),
            "a|b|"
        );
        let scoped = "{% generation %}{% set x = 1 %}{% endgeneration %}{{ x is defined }}";
        assert_eq!(render_ok(scoped), "False");
    }

    #[test]
    fn strftime_now_reads_the_fixed_clock() {
        let now = chrono::NaiveDate::from_ymd_opt(2024, 7, 26)
            .and_then(|d| d.and_hms_micro_opt(9, 5, 3, 42))
            .expect("valid date");
        let opts = RenderOptions { now: Some(now), ..Default::default() };
        let out = render("{{ strftime_now('%d %b %Y|%A %B %-d|%H:%M:%S %p|%f|%j|%y|%Z%z|%%|%Q') }}", json!([]), &opts)
            .expect("renders");
        assert_eq!(out, "26 Jul 2024|Friday July 26|09:05:03 AM|000042|208|24||%|%Q");
        let real = render("{{ strftime_now('%Y') }}", json!([]), &RenderOptions::default()).expect("renders");
        assert_eq!(real.len(), 4);
    }

    #[test]
    fn undefined_values_behave_like_jinja2() {
        assert_eq!(render_ok("[{{ nothing }}]{{ nothing is defined }}{{ nothing|length }}{% for x in nothing %}x{% endfor %}{{ messages[0].nope }}|{{ messages[9] }}"), "[]False0|");
        for source in ["{{ foo.bar }}", "{{ messages[9].role }}", "{{ nothing + 'a' }}"] {
            let err = render(source, json!([{"role": "user", "content": "hi"}]), &RenderOptions::default())
                .expect_err("attribute of undefined fails, as in jinja2");
            assert_eq!(err.line, Some(1), "{source}: {err}");
        }
    }

    #[test]
    fn loop_controls() {
        let source = "{% for i in range(10) %}{% if i == 1 %}{% continue %}{% endif %}{% if i > 3 %}{% break %}{% endif %}{{ i }}{% endfor %}";
        assert_eq!(render_ok(source), "023");
    }

    #[test]
    fn python_methods() {
        assert_eq!(render_ok("{{ '  a b  '.strip() }}|{{ '  a'.lstrip() }}|{{ 'xax'.strip('x') }}|{{ 'a-b'.split('-') }}|{{ ' a  b '.split() }}"), "a b|a|a|['a', 'b']|['a', 'b']");
        assert_eq!(
            render_ok(
                "{{ 'user'.title() }} {{ 'ab'.upper() }} {{ 'abc'.startswith('ab') }} {{ 'a.b'.replace('.', '/') }}"
            ),
            "User AB True a/b"
        );
        assert_eq!(
            render_ok(
                "{% for k, v in messages[0].items() %}{{ k }}={{ v }};{% endfor %}{{ messages[0].get('x', 'd') }}"
            ),
            "role=user;content=hi;d"
        );
        assert_eq!(render_ok("{{ \"they're\".title() }} {{ 'a b c'.split(None, 1) }} {{ 'a b c'.rsplit(' ', 1) }} {{ 'a\\r\\nb\\x0bc'.splitlines() }}"), "They'Re ['a', 'b c'] ['a b', 'c'] ['a', 'b', 'c']");
    }

    #[test]
    fn python_printing() {
        assert_eq!(render_ok("{{ true }} {{ True }} {{ false }} {{ none }} {{ nothing }}|"), "True True False None |");
        assert_eq!(
            render_ok("{{ 1.0 }} {{ 1e20 }} {{ 1.5e-7 }} {{ 0.0001 }} {{ 123456789012345678.0 }} {{ -0.0 }}"),
            "1.0 1e+20 1.5e-07 0.0001 1.2345678901234568e+17 -0.0"
        );
        assert_eq!(
            render_ok("{{ [1, 'a', none] }} {{ {'a': \"it's\", 'b': (1,)} }}"),
            "[1, 'a', None] {'a': \"it's\", 'b': (1,)}"
        );
        assert_eq!(
            render_ok("{{ true|string }} {{ [true, none]|join(',') }} {{ messages|join(',', attribute='role') }}"),
            "True True,None user"
        );
        assert_eq!(render_ok("{{ '<a href=\"x\">\\'</a>'|e }}"), "&lt;a href=&#34;x&#34;&gt;&#39;&lt;/a&gt;");
    }

    #[test]
    fn float_repr_matches_python() {
        let cases = [
            (0.0, "0.0"),
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1e-5, "1e-05"),
            (123.456, "123.456"),
            (-2.5e-300, "-2.5e-300"),
            (f64::MAX, "1.7976931348623157e+308"),
            (f64::NAN, "nan"),
            (f64::NEG_INFINITY, "-inf"),
        ];
        for (f, expected) in cases {
            assert_eq!(py_float_repr(f), expected);
        }
    }

    #[test]
    fn context_has_transformers_variables() {
        let opts = RenderOptions {
            add_generation_prompt: true,
            variables: [("bos_token".to_string(), json!("<s>"))].into_iter().collect(),
            now: None,
        };
        let out = render(
            "{{ bos_token }}{{ tools is none }}{{ documents is none }}{{ add_generation_prompt }}",
            json!([]),
            &opts,
        )
        .expect("renders");
        assert_eq!(out, "<s>TrueTrueTrue");
    }

    #[test]
    fn errors_never_panic() {
        for source in [
            "{{",
            "{% for %}",
            "{% endgeneration %}",
            "{{ 1 / 0 }}",
            "{{ messages[0]['role'] }}",
            "{{ strftime_now('%E') }}",
            "{% set ns = namespace(a=1) %}{% set ns.me = ns %}{{ ns|tojson }}",
        ] {
            let _ = ChatTemplate::new(source, "m").and_then(|t| t.render(&json!([]), &RenderOptions::default()));
        }
    }
}
