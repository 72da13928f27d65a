//! JSON as Python's `json` module writes and reads it: with `NaN`, `Infinity` and `-Infinity`.
//!
//! clembench scores an aborted episode's Main Score as `numpy.nan`, which `json.dump` writes as a bare `NaN`
//! and `json.load` reads back. serde_json refuses both, and a `serde_json::Value` cannot hold a non-finite
//! number, so such a number lives in a `Value` as a marker string (see [`float`]): [`to_string_pretty`] writes
//! it as Python does, [`from_str`] turns Python's tokens into it and [`as_f64`] reads it as the number. The
//! markers begin with U+FDD0, a Unicode noncharacter that real text does not carry.

use serde_json::{Map, Value};

const NAN: &str = "\u{FDD0}NaN";
const INF: &str = "\u{FDD0}Infinity";
const NEG_INF: &str = "\u{FDD0}-Infinity";

/// A number as a JSON value: finite numbers as themselves, NaN and infinities as their markers.
pub fn float(x: f64) -> Value {
    if x.is_nan() {
        Value::String(NAN.into())
    } else if x == f64::INFINITY {
        Value::String(INF.into())
    } else if x == f64::NEG_INFINITY {
        Value::String(NEG_INF.into())
    } else {
        serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
    }
}

/// The number a value stands for: a JSON number, or a NaN/infinity marker. Booleans count as 0 and 1, as
/// they do in Python's arithmetic.
pub fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        Value::String(s) => match s.as_str() {
            NAN => Some(f64::NAN),
            INF => Some(f64::INFINITY),
            NEG_INF => Some(f64::NEG_INFINITY),
            _ => None,
        },
        _ => None,
    }
}

/// `json.dumps(value, indent=2, ensure_ascii=False)`: markers become `NaN`, `Infinity`, `-Infinity`.
pub fn to_string_pretty(v: &Value) -> String {
    let mut out = String::new();
    write(v, 0, &mut out);
    out
}

fn write(v: &Value, indent: usize, out: &mut String) {
    match v {
        Value::String(s) => match s.as_str() {
            NAN => out.push_str("NaN"),
            INF => out.push_str("Infinity"),
            NEG_INF => out.push_str("-Infinity"),
            _ => out.push_str(&Value::String(s.clone()).to_string()),
        },
        Value::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                out.push_str(if i == 0 { "\n" } else { ",\n" });
                pad(indent + 2, out);
                write(item, indent + 2, out);
            }
            out.push('\n');
            pad(indent, out);
            out.push(']');
        }
        Value::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                out.push_str(if i == 0 { "\n" } else { ",\n" });
                pad(indent + 2, out);
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(": ");
                write(item, indent + 2, out);
            }
            out.push('\n');
            pad(indent, out);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn pad(n: usize, out: &mut String) {
    out.extend(std::iter::repeat_n(' ', n));
}

/// `json.loads`: JSON plus Python's `NaN`, `Infinity` and `-Infinity`, which become markers.
pub fn from_str(text: &str) -> Result<Value, serde_json::Error> {
    serde_json::from_str(&quote_specials(text))
}

/// The text with every `NaN`, `Infinity` and `-Infinity` outside strings replaced by a quoted marker.
/// Outside strings JSON has no other words starting with `N` or `I`, so a plain scan finds them.
fn quote_specials(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains("NaN") && !text.contains("Infinity") {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else {
            let special = [("NaN", NAN), ("Infinity", INF), ("-Infinity", NEG_INF)]
                .into_iter()
                .find(|(token, _)| rest.starts_with(token));
            if let Some((token, marker)) = special {
                out.push('"');
                out.push_str(marker);
                out.push('"');
                rest = &rest[token.len()..];
                continue;
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out.into()
}

/// The object under `key`, if `v` is an object holding one.
pub fn object<'a>(v: &'a Value, key: &str) -> Option<&'a Map<String, Value>> {
    v.get(key).and_then(Value::as_object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn writes_and_reads_python_specials() {
        let v = json!({"a": float(f64::NAN), "b": [float(f64::INFINITY), float(f64::NEG_INFINITY), 1, 1.5],
                       "c": {}, "d": [], "s": "NaN \"Infinity\" \u{e9}"});
        let text = to_string_pretty(&v);
        assert_eq!(
            text,
            "{\n  \"a\": NaN,\n  \"b\": [\n    Infinity,\n    -Infinity,\n    1,\n    1.5\n  ],\n  \"c\": {},\n  \"d\": [],\n  \
             \"s\": \"NaN \\\"Infinity\\\" \u{e9}\"\n}"
        );
        let back = from_str(&text).expect("reads");
        assert_eq!(back, v);
        assert!(as_f64(&back["a"]).is_some_and(f64::is_nan));
        assert_eq!(as_f64(&back["b"][1]), Some(f64::NEG_INFINITY));
        assert_eq!(back["s"], "NaN \"Infinity\" \u{e9}", "strings keep their words");
        assert_eq!(as_f64(&json!(true)), Some(1.0));
        assert_eq!(as_f64(&json!("NaN")), None, "a string NaN is text, not a number");
        assert!(from_str("{\"a\": Nan}").is_err());
    }
}
