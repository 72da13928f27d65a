//! Python literals (`{'a': True, 'b': None}`) as JSON values: a recursive-descent parser of the literals
//! `ast.literal_eval` reads, linear in its input and nesting at most [`MAX_DEPTH`] deep.
//!
//! It accepts what the `py_literal` crate accepts (the tests check it against that crate on shallow input) and
//! a little more of Python: `r`/`u` prefixes, triple-quoted strings, adjacent strings joined, parenthesised
//! values and newlines between tokens. `py_literal`'s pest grammar re-parses every value when it backtracks,
//! so its time doubles with each level of nesting (18 levels took 2 s); it is no longer used to parse.
//! Bytes, sets and complex numbers parse as Python but have no JSON form, and are refused.

use serde_json::{Map, Number, Value};

/// The deepest nesting of dicts, lists and tuples a literal may have.
pub const MAX_DEPTH: usize = 64;

/// Parses one Python literal expression into JSON; dict keys must be strings.
pub fn parse(text: &str) -> Result<Value, String> {
    let text = text.trim();
    let b = text.as_bytes();
    let mut p = Parser { s: text, b, pos: 0, last_brace: b.iter().rposition(|&c| c == b'}') };
    let value = p.value(0)?;
    p.skip_ws();
    if p.pos < p.b.len() {
        return Err(p.error("unexpected text after the value"));
    }
    Ok(value)
}

/// The deepest nesting of brackets (`{`, `[`, `(`) outside string literals, counted in one pass that stops as
/// soon as it passes `limit`. Strings are skipped as Python's tokenizer does (which also covers JSON's): `'`,
/// `"` and their triple forms, a backslash escaping the next character.
pub fn nesting_depth(text: &str, limit: usize) -> usize {
    let b = text.as_bytes();
    let (mut i, mut depth, mut deepest) = (0, 0usize, 0usize);
    while i < b.len() {
        match b[i] {
            b'{' | b'[' | b'(' => {
                depth += 1;
                deepest = deepest.max(depth);
                if deepest > limit {
                    break;
                }
            }
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            q @ (b'\'' | b'"') => {
                let triple = b.get(i + 1) == Some(&q) && b.get(i + 2) == Some(&q);
                i += if triple { 3 } else { 1 };
                while i < b.len() {
                    match b[i] {
                        b'\\' => i += 1,
                        c if c == q && (!triple || (b.get(i + 1) == Some(&q) && b.get(i + 2) == Some(&q))) => {
                            i += if triple { 2 } else { 0 };
                            break;
                        }
                        b'\n' | b'\r' if !triple => break,
                        _ => {}
                    }
                    i += 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    deepest
}

/// A number while an expression like `1 - 2.5` is summed, as `py_literal` sums it (from integer 0).
#[derive(Clone, Copy)]
enum Num {
    Int(i128),
    Float(f64),
    /// Only ever refused, so its value is not kept.
    Complex,
}

impl Num {
    fn combine(self, other: Num, negate: bool) -> Option<Num> {
        Some(match (self, other) {
            (Num::Complex, _) | (_, Num::Complex) => Num::Complex,
            (Num::Int(a), Num::Int(b)) => Num::Int(if negate { a.checked_sub(b)? } else { a.checked_add(b)? }),
            (a, b) => {
                let (a, b) = (a.as_f64(), b.as_f64());
                Num::Float(if negate { a - b } else { a + b })
            }
        })
    }

    fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
            Num::Complex => f64::NAN,
        }
    }
}

struct Parser<'a> {
    s: &'a str,
    b: &'a [u8],
    pos: usize,
    /// Where the last `}` is (for `\N{...}`, found once so the parse stays linear).
    last_brace: Option<usize>,
}

impl Parser<'_> {
    fn error(&self, what: &str) -> String {
        let column = self.s.get(..self.pos).map_or(self.pos, |p| p.chars().count()) + 1;
        format!("{what} at column {column}")
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn peek_at(&self, ahead: usize) -> Option<u8> {
        self.b.get(self.pos + ahead).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\x0c' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        self.skip_ws();
        match self.peek() {
            None => Err(self.error("expected a value")),
            Some(b'{') => self.braces(depth + 1),
            Some(b'[') => self.sequence(depth + 1, b']').map(Value::Array),
            Some(b'(') => self.parenthesised(depth + 1),
            Some(b'\'' | b'"') => self.strings(),
            Some(b'+' | b'-' | b'0'..=b'9') => self.number_expr(),
            Some(b'.') if self.peek_at(1).is_some_and(|c| c.is_ascii_digit()) => self.number_expr(),
            Some(c) if c.is_ascii_alphabetic() || c == b'_' => self.name(),
            Some(_) => Err(self.error("expected a value")),
        }
    }

    fn open(&mut self, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(self.error(&format!("nested more than {MAX_DEPTH} levels deep (the nesting-depth limit)")));
        }
        self.pos += 1;
        Ok(())
    }

    /// `[...]` or the rest of a tuple: values separated by commas, a trailing comma allowed.
    fn sequence(&mut self, depth: usize, close: u8) -> Result<Vec<Value>, String> {
        self.open(depth)?;
        let mut items = Vec::new();
        self.items_until(depth, close, &mut items)?;
        Ok(items)
    }

    fn items_until(&mut self, depth: usize, close: u8, items: &mut Vec<Value>) -> Result<(), String> {
        loop {
            self.skip_ws();
            if self.peek() == Some(close) {
                self.pos += 1;
                return Ok(());
            }
            items.push(self.value(depth)?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(c) if c == close => {}
                _ => return Err(self.error(&format!("expected ',' or '{}'", close as char))),
            }
        }
    }

    /// `()`, a tuple `(a,)` / `(a, b)`, or a parenthesised value `(a)` as Python reads it.
    fn parenthesised(&mut self, depth: usize) -> Result<Value, String> {
        self.open(depth)?;
        self.skip_ws();
        if self.peek() == Some(b')') {
            self.pos += 1;
            return Ok(Value::Array(Vec::new()));
        }
        let first = self.value(depth)?;
        self.skip_ws();
        match self.peek() {
            Some(b')') => {
                self.pos += 1;
                Ok(first)
            }
            Some(b',') => {
                self.pos += 1;
                let mut items = vec![first];
                self.items_until(depth, b')', &mut items)?;
                Ok(Value::Array(items))
            }
            _ => Err(self.error("expected ',' or ')'")),
        }
    }

    /// `{}` and dicts; a set (`{1, 2}`) parses but has no JSON form.
    fn braces(&mut self, depth: usize) -> Result<Value, String> {
        self.open(depth)?;
        let mut map = Map::new();
        loop {
            self.skip_ws();
            if self.peek() == Some(b'}') {
                self.pos += 1;
                return Ok(Value::Object(map));
            }
            let at = self.pos;
            let key = self.value(depth)?;
            self.skip_ws();
            if self.peek() != Some(b':') {
                return Err(if map.is_empty() && matches!(self.peek(), Some(b',' | b'}')) {
                    self.error("a set has no JSON form")
                } else {
                    self.error("expected ':'")
                });
            }
            let Value::String(key) = key else {
                let kind = crate::spec::json_kind(&key);
                self.pos = at;
                return Err(self.error(&format!("a dict key must be a string, not {kind}")));
            };
            self.pos += 1;
            // Python keeps the last value of a repeated key, in the first one's place; so does Map::insert.
            map.insert(key, self.value(depth)?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {}
                _ => return Err(self.error("expected ',' or '}'")),
            }
        }
    }

    /// `True`, `False`, `None`, or a string with a prefix (`r'...'`, `u'...'`).
    fn name(&mut self) -> Result<Value, String> {
        let start = self.pos;
        let mut end = start;
        while self.b.get(end).is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_') {
            end += 1;
        }
        let word = self.s.get(start..end).unwrap_or("");
        if matches!(self.b.get(end), Some(b'\'' | b'"')) && word.len() <= 2 {
            let lower = word.to_ascii_lowercase();
            match lower.as_str() {
                "r" | "u" => return self.strings(),
                "b" | "rb" | "br" => return Err(self.error("bytes have no JSON form")),
                "f" | "rf" | "fr" => return Err(self.error("an f-string is not a literal")),
                _ => {}
            }
        }
        let value = match word {
            "True" => Value::Bool(true),
            "False" => Value::Bool(false),
            "None" => Value::Null,
            _ => return Err(self.error(&format!("{word:?} is not a literal"))),
        };
        self.pos = end;
        Ok(value)
    }

    /// One string, and any strings right after it (Python joins adjacent string literals).
    fn strings(&mut self) -> Result<Value, String> {
        let mut out = String::new();
        loop {
            self.string(&mut out)?;
            let save = self.pos;
            self.skip_ws();
            let prefix = matches!(
                (self.peek(), self.peek_at(1)),
                (Some(b'\'' | b'"'), _) | (Some(b'r' | b'R' | b'u' | b'U'), Some(b'\'' | b'"'))
            );
            if !prefix {
                self.pos = save;
                return Ok(Value::String(out));
            }
        }
    }

    /// One string literal with an optional `r`/`u` prefix, appended to `out`.
    fn string(&mut self, out: &mut String) -> Result<(), String> {
        let mut raw = false;
        while let Some(c @ (b'r' | b'R' | b'u' | b'U')) = self.peek() {
            raw |= matches!(c, b'r' | b'R');
            self.pos += 1;
        }
        let start = self.pos;
        let Some(q @ (b'\'' | b'"')) = self.peek() else { return Err(self.error("expected a string")) };
        let triple = self.peek_at(1) == Some(q) && self.peek_at(2) == Some(q);
        self.pos += if triple { 3 } else { 1 };
        loop {
            let Some(c) = self.peek() else { return self.unterminated(start) };
            match c {
                _ if c == q && (!triple || (self.peek_at(1) == Some(q) && self.peek_at(2) == Some(q))) => {
                    self.pos += if triple { 3 } else { 1 };
                    return Ok(());
                }
                b'\n' | b'\r' if !triple => return Err(self.error("a newline inside a one-line string")),
                b'\\' if raw => {
                    // A raw string keeps the backslash and the character after it (which cannot end the string).
                    let ch = self.s.get(self.pos + 1..).and_then(|r| r.chars().next());
                    let Some(ch) = ch else { return self.unterminated(start) };
                    out.push('\\');
                    out.push(ch);
                    self.pos += 1 + ch.len_utf8();
                }
                b'\\' => self.escape(out, start)?,
                _ => {
                    // Copy this character and the plain ones after it, up to a quote, backslash or line end.
                    let from = self.pos + 1;
                    let run = self.b[from..]
                        .iter()
                        .position(|&b| b == q || b == b'\\' || b == b'\n' || b == b'\r')
                        .map_or(self.b.len(), |n| from + n);
                    out.push_str(self.s.get(self.pos..run).unwrap_or(""));
                    self.pos = run;
                }
            }
        }
    }

    /// A backslash escape in a (not raw) string; unknown escapes are kept as written, as `py_literal` does.
    fn escape(&mut self, out: &mut String, start: usize) -> Result<(), String> {
        let Some(next) = self.s.get(self.pos + 1..).and_then(|r| r.chars().next()) else {
            return self.unterminated(start);
        };
        let simple = match next {
            '\\' => Some('\\'),
            '\'' => Some('\''),
            '"' => Some('"'),
            'a' => Some('\x07'),
            'b' => Some('\x08'),
            'f' => Some('\x0c'),
            'n' => Some('\n'),
            'r' => Some('\r'),
            't' => Some('\t'),
            'v' => Some('\x0b'),
            _ => None,
        };
        if let Some(c) = simple {
            out.push(c);
            self.pos += 2;
            return Ok(());
        }
        match next {
            '\n' => self.pos += 2,
            '\r' => self.pos += if self.peek_at(2) == Some(b'\n') { 3 } else { 2 },
            '0'..='7' => {
                let digits = self.run_of(self.pos + 1, 3, |c| (b'0'..=b'7').contains(&c));
                let code = u32::from_str_radix(digits, 8).unwrap_or(0);
                out.push(char::from_u32(code).unwrap_or('\0'));
                self.pos += 1 + digits.len();
            }
            'x' | 'u' | 'U' => {
                let want = match next {
                    'x' => 2,
                    'u' => 4,
                    _ => 8,
                };
                let digits = self.run_of(self.pos + 2, want, |c| c.is_ascii_hexdigit());
                if digits.len() < want {
                    out.push('\\');
                    out.push(next);
                    self.pos += 2;
                } else {
                    let code = u32::from_str_radix(digits, 16).unwrap_or(u32::MAX);
                    let c =
                        char::from_u32(code).ok_or_else(|| self.error(&format!("invalid escape \\{next}{digits}")))?;
                    out.push(c);
                    self.pos += 2 + want;
                }
            }
            // As py_literal: `\N{` with a `}` anywhere after it is a name escape (unsupported), else kept.
            'N' if self.peek_at(2) == Some(b'{') && self.last_brace > Some(self.pos + 2) => {
                return Err(self.error("\\N{...} escapes are not supported"));
            }
            other => {
                out.push('\\');
                out.push(other);
                self.pos += 1 + other.len_utf8();
            }
        }
        Ok(())
    }

    /// Up to `max` bytes from `from` that satisfy `ok`, as text.
    fn run_of(&self, from: usize, max: usize, ok: impl Fn(u8) -> bool) -> &str {
        let tail = self.b.get(from..).unwrap_or(&[]);
        let n = tail.iter().take(max).take_while(|&&c| ok(c)).count();
        self.s.get(from..from + n).unwrap_or("")
    }

    /// Signs and numbers summed left to right: `-1`, `+-2.5`, `1 - 2`, `1 + 2j`.
    fn number_expr(&mut self) -> Result<Value, String> {
        let start = self.pos;
        let mut total = Num::Int(0);
        loop {
            let mut negate = false;
            while let Some(c @ (b'+' | b'-')) = self.peek() {
                negate ^= c == b'-';
                self.pos += 1;
                self.skip_ws();
            }
            let n = self.number()?;
            total = total.combine(n, negate).ok_or_else(|| self.error("integer too large"))?;
            let save = self.pos;
            self.skip_ws();
            if !matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos = save;
                break;
            }
        }
        match total {
            Num::Int(i) => {
                let text = i.to_string();
                text.parse::<Number>().map(Value::Number).map_err(|_| format!("integer {text} is too large"))
            }
            Num::Float(f) => Number::from_f64(f)
                .map(Value::Number)
                .ok_or_else(|| self.error_at(start, &format!("the float {f} has no JSON form"))),
            Num::Complex => Err(self.error_at(start, "a complex number has no JSON form")),
        }
    }

    /// A string that runs to the end of the input, reported where it starts.
    fn unterminated<T>(&mut self, start: usize) -> Result<T, String> {
        self.pos = start;
        Err(self.error("unterminated string"))
    }

    fn error_at(&self, pos: usize, what: &str) -> String {
        Parser { pos, ..*self }.error(what)
    }

    /// Digits with single underscores between them; the digits without underscores.
    fn digits(&mut self, ok: impl Fn(u8) -> bool) -> String {
        let mut out = String::new();
        while let Some(c) = self.peek() {
            if ok(c) {
                out.push(c as char);
                self.pos += 1;
            } else if c == b'_' && !out.is_empty() && self.peek_at(1).is_some_and(&ok) {
                self.pos += 1;
            } else {
                break;
            }
        }
        out
    }

    /// One unsigned number: an integer (`12`, `0x1f`, `0o7`, `0b1`, `1_000`), a float (`1.`, `.5`, `1e-3`) or
    /// an imaginary number (`2j`).
    fn number(&mut self) -> Result<Num, String> {
        let start = self.pos;
        if self.peek() == Some(b'0') {
            let radix = match self.peek_at(1) {
                Some(b'x' | b'X') => 16,
                Some(b'o' | b'O') => 8,
                Some(b'b' | b'B') => 2,
                _ => 0,
            };
            if radix != 0 {
                self.pos += 2;
                // As in Python, an underscore may also follow the prefix.
                if self.peek() == Some(b'_') {
                    self.pos += 1;
                }
                let digits = self.digits(|c| (c as char).is_digit(radix));
                if digits.is_empty() {
                    return Err(self.error("expected digits"));
                }
                return i128::from_str_radix(&digits, radix)
                    .map(Num::Int)
                    .map_err(|_| self.error_at(start, "integer too large"));
            }
        }
        let int = self.digits(|c| c.is_ascii_digit());
        let mut text = int.clone();
        let mut float = false;
        if self.peek() == Some(b'.') {
            let frac_start = self.pos;
            self.pos += 1;
            let frac = self.digits(|c| c.is_ascii_digit());
            if frac.is_empty() && int.is_empty() {
                self.pos = frac_start;
                return Err(self.error("expected a number"));
            }
            text.push('.');
            text.push_str(&frac);
            float = true;
        }
        if int.is_empty() && !float {
            return Err(self.error("expected a number"));
        }
        if let Some(b'e' | b'E') = self.peek() {
            let save = self.pos;
            self.pos += 1;
            let mut sign = "";
            if let Some(c @ (b'+' | b'-')) = self.peek() {
                sign = if c == b'-' { "-" } else { "" };
                self.pos += 1;
            }
            let exp = self.digits(|c| c.is_ascii_digit());
            if exp.is_empty() {
                self.pos = save;
            } else {
                text.push('e');
                text.push_str(sign);
                text.push_str(&exp);
                float = true;
            }
        }
        if let Some(b'j' | b'J') = self.peek() {
            self.pos += 1;
            return Ok(Num::Complex);
        }
        if float {
            return text.parse::<f64>().map(Num::Float).map_err(|e| self.error_at(start, &e.to_string()));
        }
        text.parse::<i128>().map(Num::Int).map_err(|_| self.error_at(start, "integer too large"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn literals() {
        let ok = |s: &str| parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(
            ok("{'a': True, \"b\": None, 'c': [1, -2.5, (3,)], 'd': ()}"),
            json!({"a": true, "b": null, "c": [1, -2.5, [3]], "d": []})
        );
        assert_eq!(ok("{'it''s': 'x'}"), json!({"its": "x"}));
        assert_eq!(ok(r"'a\'b\n\x41\101\u00e9\q'"), json!("a'b\nAA\u{e9}\\q"));
        assert_eq!(ok(r"r'a\'b\n'"), json!("a\\'b\\n"));
        assert_eq!(ok("'''a'b\nc'''"), json!("a'b\nc"));
        assert_eq!(ok("1 - 2"), json!(-1));
        assert_eq!(ok("0x_1f + 0o7 + 0b1 + 1_000"), json!(1039));
        assert_eq!(ok("(1)"), json!(1));
        assert_eq!(ok("{'a': 1, 'a': 2, 'b': 3}"), json!({"a": 2, "b": 3}));
        assert_eq!(ok("{\n 'a':\n 1,\n}"), json!({"a": 1}));
        assert_eq!(ok(r"['\N{']"), json!(["\\N{"]), "no closing brace: kept as written");
        for (bad, says) in [
            ("{1: 2}", "a dict key must be a string, not a number at column 2"),
            ("{1, 2}", "a set has no JSON form"),
            ("b'x'", "bytes have no JSON form"),
            ("1j", "a complex number has no JSON form"),
            ("1e999", "has no JSON form"),
            ("[1,,]", "expected a value at column 4"),
            ("'abc", "unterminated string at column 1"),
            ("'a\\", "unterminated string"),
            ("{'a': true}", "\"true\" is not a literal"),
            ("[1] 2", "unexpected text after the value"),
            ("'\\ud800'", "invalid escape"),
            (r"'\N{DASH}'", "\\N{...} escapes are not supported"),
            ("99999999999999999999999999999999999999999", "integer too large"),
        ] {
            let e = parse(bad).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn depth_limit_and_scan() {
        let nest = |d: usize| format!("{}1{}", "{'a': ".repeat(d), "}".repeat(d));
        assert!(parse(&nest(MAX_DEPTH)).is_ok());
        let e = parse(&nest(MAX_DEPTH + 1)).expect_err("too deep");
        assert!(e.contains("nested more than 64 levels deep"), "{e}");
        assert_eq!(nesting_depth(&nest(10), 64), 10);
        assert_eq!(nesting_depth("{'a': '{{{[[[', \"b\": \"]]]\\\"(((\"}", 64), 1);
        assert_eq!(nesting_depth("['''a'b]]]''', [r'\\'', [1]]]", 64), 3);
        assert_eq!(nesting_depth(&"[".repeat(10_000), 64), 65, "stops once past the limit");
    }

    /// The previous parser: py_literal, then this conversion.
    fn reference(text: &str) -> Option<Value> {
        use py_literal::Value as Py;
        fn to_json(py: &Py) -> Option<Value> {
            Some(match py {
                Py::String(s) => Value::String(s.clone()),
                Py::Boolean(b) => Value::Bool(*b),
                Py::None => Value::Null,
                Py::Integer(i) => Value::Number(i.to_string().parse().ok()?),
                Py::Float(f) => Value::Number(Number::from_f64(*f)?),
                Py::List(items) | Py::Tuple(items) => Value::Array(items.iter().map(to_json).collect::<Option<_>>()?),
                Py::Dict(pairs) => {
                    let mut m = Map::new();
                    for (k, v) in pairs {
                        let Py::String(key) = k else { return None };
                        m.insert(key.clone(), to_json(v)?);
                    }
                    Value::Object(m)
                }
                _ => return None,
            })
        }
        to_json(&text.trim().parse::<Py>().ok()?)
    }

    mod same_as_py_literal {
        use super::*;
        use proptest::prelude::*;

        fn scalar() -> impl Strategy<Value = String> {
            const ATOMS: &[&str] = &[
                "0",
                "7",
                "007",
                "1_000",
                "0x_1f",
                "0o17",
                "0b101",
                "0b",
                "18446744073709551615",
                "1.",
                ".5",
                "1.5e-3",
                "1e5",
                "1E+2",
                "1_0.2_5",
                "2j",
                "1e",
                "True",
                "False",
                "None",
                "true",
                "nil",
                "'x'",
                "\"y\"",
                "''",
                "b'z'",
                "r'a'",
                "'''t'''",
            ];
            const CHARS: &[&str] = &[
                "a",
                " ",
                "é",
                "'",
                "\"",
                "\\n",
                "\\t",
                "\\\\",
                "\\'",
                "\\\"",
                "\\x41",
                "\\x4",
                "\\101",
                "\\0",
                "\\q",
                "\\u00e9",
                "\\u12",
                "\\U0001F600",
                "\\N",
                "\\\n",
                "{",
                "]",
                ",",
            ];
            prop_oneof![
                prop::sample::select(ATOMS).prop_map(String::from),
                (
                    prop::collection::vec(prop::sample::select(&["", "-", "+", "- ", "+-"][..]), 1..3),
                    prop::collection::vec(prop::sample::select(&ATOMS[..10]), 1..3)
                )
                    .prop_map(|(signs, nums)| signs
                        .iter()
                        .zip(nums.iter())
                        .map(|(s, n)| format!("{s}{n}"))
                        .collect::<Vec<_>>()
                        .join(" ")),
                (prop::sample::select(&["'", "\""][..]), prop::collection::vec(prop::sample::select(CHARS), 0..6))
                    .prop_map(|(q, body)| format!("{q}{}{q}", body.concat())),
            ]
        }

        fn literal() -> impl Strategy<Value = String> {
            let ws = || prop::sample::select(&["", " ", "\t", "\n"][..]);
            scalar().prop_recursive(3, 24, 4, move |inner| {
                let items = prop::collection::vec((inner.clone(), ws()), 0..4);
                prop_oneof![
                    (items.clone(), any::<bool>()).prop_map(|(v, trailing)| {
                        let parts: Vec<String> = v.into_iter().map(|(x, w)| format!("{w}{x}")).collect();
                        format!("[{}{}]", parts.join(","), if trailing { "," } else { "" })
                    }),
                    (items.clone(), any::<bool>()).prop_map(|(v, trailing)| {
                        let parts: Vec<String> = v.into_iter().map(|(x, _)| x).collect();
                        format!("({}{})", parts.join(", "), if trailing { "," } else { "" })
                    }),
                    prop::collection::vec((inner.clone(), inner.clone(), ws()), 0..4).prop_map(|v| {
                        let parts: Vec<String> = v.into_iter().map(|(k, x, w)| format!("{k}:{w}{x}")).collect();
                        format!("{{{}}}", parts.join(", "))
                    }),
                    items.prop_map(|v| {
                        let parts: Vec<String> = v.into_iter().map(|(x, _)| x).collect();
                        format!("{{{}}}", parts.join(","))
                    }),
                ]
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]
            /// Whatever the previous parser read, this one reads the same way.
            #[test]
            fn reads_what_py_literal_read(text in literal()) {
                if let Some(expected) = reference(&text) {
                    prop_assert_eq!(parse(&text).ok(), Some(expected), "{:?}", text);
                }
            }

            #[test]
            fn printable_noise(text in "[\\[\\](){}'\",:0-9a-zA-Z_. +\\-\\\\]{0,16}") {
                let ours = parse(&text);
                if let Some(expected) = reference(&text) {
                    prop_assert_eq!(ours.ok(), Some(expected), "{:?}", text);
                }
            }
        }
    }
}
