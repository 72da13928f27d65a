//! Python regular expressions (`eos_to_cull`, `cot_end_tag`) compiled with `fancy-regex`.
//!
//! The registry holds patterns written for Python's `re`. `fancy-regex` covers lookaround and backreferences;
//! the few places where the syntaxes differ are rewritten before compiling: `\Z`, `$` (which in Python also
//! matches before a final newline), `{` that is not a quantifier, `{,n}`, `(?P=name)`, `(?#...)`, and
//! characters that open nested sets or set operations inside `[...]` in Rust but are literal in Python.

use std::fmt;

/// A compiled Python regular expression.
#[derive(Clone)]
pub struct PyRegex {
    source: String,
    regex: fancy_regex::Regex,
}

/// A pattern that does not compile, or failed while matching (backtracking limit).
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
#[error("regular expression {pattern:?}: {reason}")]
pub struct PyRegexError {
    pub pattern: String,
    pub reason: String,
}

impl fmt::Debug for PyRegex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PyRegex({:?})", self.source)
    }
}

impl PyRegex {
    pub fn new(pattern: &str) -> Result<Self, PyRegexError> {
        let translated = translate(pattern);
        let regex = fancy_regex::RegexBuilder::new(&translated)
            .build()
            .map_err(|e| PyRegexError { pattern: pattern.into(), reason: e.to_string() })?;
        Ok(PyRegex { source: pattern.into(), regex })
    }

    /// The pattern as written in the registry.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Byte ranges of every non-overlapping match, as `re.finditer` finds them.
    pub fn find_ranges(&self, text: &str) -> Result<Vec<(usize, usize)>, PyRegexError> {
        self.regex
            .find_iter(text)
            .map(|m| m.map(|m| (m.start(), m.end())))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| PyRegexError { pattern: self.source.clone(), reason: e.to_string() })
    }

    /// `re.sub(pattern, "", text)`.
    pub fn remove_all(&self, text: &str) -> Result<String, PyRegexError> {
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for (start, end) in self.find_ranges(text)? {
            out.push_str(&text[last..start]);
            last = end;
        }
        out.push_str(&text[last..]);
        Ok(out)
    }

    /// `parts = re.split(pattern, text)`: returns `(parts[0], parts[-1])` when there was a match, else `None`.
    pub fn split_first_last<'t>(&self, text: &'t str) -> Result<Option<(&'t str, &'t str)>, PyRegexError> {
        let ranges = self.find_ranges(text)?;
        Ok(match (ranges.first(), ranges.last()) {
            (Some(first), Some(last)) => Some((&text[..first.0], &text[last.1..])),
            _ => None,
        })
    }
}

/// Rewrites Python `re` syntax into the `fancy-regex` dialect.
pub fn translate(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let multiline = has_inline_flag(pattern, 'm');
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut i = 0;
    let mut in_class = false;
    let mut class_start = 0usize;
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' {
            match chars.get(i + 1) {
                Some('Z') if !in_class => out.push_str(r"\z"),
                Some(&n) => {
                    out.push('\\');
                    out.push(n);
                }
                None => out.push('\\'),
            }
            i += 2;
            continue;
        }
        if in_class {
            match c {
                ']' if i > class_start => {
                    in_class = false;
                    out.push(']');
                }
                '[' | '&' | '~' => {
                    out.push('\\');
                    out.push(c);
                }
                '-' if chars.get(i + 1) == Some(&'-') => out.push_str(r"\-"),
                _ => out.push(c),
            }
            i += 1;
            continue;
        }
        match c {
            '[' => {
                in_class = true;
                out.push('[');
                i += 1;
                if chars.get(i) == Some(&'^') {
                    out.push('^');
                    i += 1;
                }
                // A `]` right after the opening bracket is a literal in Python.
                if chars.get(i) == Some(&']') {
                    out.push_str(r"\]");
                    i += 1;
                }
                class_start = i;
                continue;
            }
            '$' if !multiline => out.push_str(r"(?:\z|(?=\n\z))"),
            '{' => match quantifier(&chars[i..]) {
                Some((text, len)) => {
                    out.push_str(&text);
                    i += len;
                    continue;
                }
                None => out.push_str(r"\{"),
            },
            '}' => out.push_str(r"\}"),
            '(' if chars.get(i + 1) == Some(&'?') => {
                let rest: String = chars[i..].iter().take(4).collect();
                if rest.starts_with("(?P=") {
                    if let Some(close) = chars[i..].iter().position(|&x| x == ')') {
                        let name: String = chars[i + 4..i + close].iter().collect();
                        out.push_str(&format!(r"\k<{name}>"));
                        i += close + 1;
                        continue;
                    }
                } else if rest.starts_with("(?#") {
                    if let Some(close) = chars[i..].iter().position(|&x| x == ')') {
                        i += close + 1;
                        continue;
                    }
                }
                out.push('(');
            }
            _ => out.push(c),
        }
        i += 1;
    }
    out
}

/// A Python quantifier at the start of `chars` (`{m}`, `{m,}`, `{,n}`, `{m,n}`, `{,}`), in Rust syntax.
fn quantifier(chars: &[char]) -> Option<(String, usize)> {
    let mut i = 1;
    let lo: String = chars[i..].iter().take_while(|c| c.is_ascii_digit()).collect();
    i += lo.len();
    if chars.get(i) == Some(&'}') {
        return (!lo.is_empty()).then(|| (format!("{{{lo}}}"), i + 1));
    }
    if chars.get(i) != Some(&',') {
        return None;
    }
    i += 1;
    let hi: String = chars[i..].iter().take_while(|c| c.is_ascii_digit()).collect();
    i += hi.len();
    if chars.get(i) != Some(&'}') {
        return None;
    }
    let lo = if lo.is_empty() { "0".to_string() } else { lo };
    Some((format!("{{{lo},{hi}}}"), i + 1))
}

fn has_inline_flag(pattern: &str, flag: char) -> bool {
    let mut rest = pattern;
    while let Some(pos) = rest.find("(?") {
        let after = &rest[pos + 2..];
        let flags: String = after.chars().take_while(|c| c.is_ascii_alphabetic()).collect();
        if flags.contains(flag) && after[flags.len()..].starts_with([')', ':']) {
            return true;
        }
        rest = after;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translations() {
        assert_eq!(translate(r"a\Z"), r"a\z");
        assert_eq!(translate("a{,3}"), "a{0,3}");
        assert_eq!(translate("a{x}"), r"a\{x\}");
        assert_eq!(translate("[[]"), r"[\[]");
        assert_eq!(translate("[]a]"), r"[\]a]");
        assert_eq!(translate("(?P<n>a)(?P=n)"), r"(?P<n>a)\k<n>");
        assert_eq!(translate("a(?#note)b"), "ab");
    }

    #[test]
    fn python_semantics() {
        let re = PyRegex::new(r"<\|im_end\|>").expect("compiles");
        assert_eq!(re.remove_all("hi<|im_end|> there<|im_end|>").expect("runs"), "hi there");
        let dollar = PyRegex::new("end$").expect("compiles");
        assert_eq!(dollar.remove_all("the end\n").expect("runs"), "the \n");
        let look = PyRegex::new(r"(?<=a)b(?!c)").expect("compiles");
        assert_eq!(look.remove_all("abc ab").expect("runs"), "abc a");
        let back = PyRegex::new(r"(\w)\1").expect("compiles");
        assert_eq!(back.remove_all("aab").expect("runs"), "b");
        assert!(PyRegex::new("(unclosed").is_err());
    }
}
