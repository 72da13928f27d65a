//! `ModelSpec`: a (partial) model entry, how a selector string becomes one, and unification.
//!
//! Unification follows nltk's feature-structure unification as clemcore uses it: a key on one side only is
//! copied, equal scalars unify with Python's `==` (`1 == 1.0 == true`, `"1" != 1`), objects unify
//! recursively, lists element-wise at equal length, and any conflict means no match.

use std::fmt;
use std::hash::{Hash, Hasher};

use serde_json::{Map, Value};

/// Names that never go through the registry.
pub const MOCK_NAMES: [&str; 2] = ["mock", "programmatic"];
/// Names that select a human at the terminal.
pub const HUMAN_NAMES: [&str; 2] = ["human", "terminal"];

/// A model specification: an object with at least a `model_name` once resolved, possibly partial before.
///
/// Compares and hashes by content (key order does not matter; numbers compare as JSON values, so `1` and
/// `1.0` are different specs even though they unify).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct ModelSpec(Map<String, Value>);

/// Why a selector string could not be read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SelectorError {
    #[error("model selector is empty")]
    Empty,
    #[error("model selector {selector:?} is neither a model name nor a JSON or Python dict: {reason}")]
    Unparsable { selector: String, reason: String },
    #[error("model selector {selector:?} must be an object, not {kind}")]
    NotAnObject { selector: String, kind: &'static str },
    /// Checked before parsing, so a deep selector costs one pass over its text (either syntax).
    #[error("model selector is nested more than {limit} levels deep (the nesting-depth limit for selectors)")]
    TooDeep { limit: usize },
}

/// The deepest nesting of objects and lists a selector may have, in JSON or Python syntax.
pub const MAX_SELECTOR_DEPTH: usize = crate::pyliteral::MAX_DEPTH;

impl ModelSpec {
    pub fn new(map: Map<String, Value>) -> Self {
        ModelSpec(map)
    }

    /// A spec that only names a model.
    pub fn from_name(name: &str) -> Self {
        let mut m = Map::new();
        m.insert("model_name".into(), Value::String(name.into()));
        ModelSpec(m)
    }

    /// Reads a command-line selector: a model name, a JSON object, or a Python dict literal
    /// (`{'model_name': 'x', 'flag': True}`), parsed by a real parser so apostrophes inside values survive.
    pub fn parse_selector(selector: &str) -> Result<Self, SelectorError> {
        let trimmed = selector.trim();
        if trimmed.is_empty() {
            return Err(SelectorError::Empty);
        }
        if !trimmed.starts_with('{') {
            return Ok(Self::from_name(trimmed));
        }
        if crate::pyliteral::nesting_depth(trimmed, MAX_SELECTOR_DEPTH) > MAX_SELECTOR_DEPTH {
            return Err(SelectorError::TooDeep { limit: MAX_SELECTOR_DEPTH });
        }
        let value = match serde_json::from_str::<Value>(trimmed) {
            Ok(v) => v,
            Err(json_err) => match crate::pyliteral::parse(trimmed) {
                Ok(v) => v,
                Err(py_err) => {
                    return Err(SelectorError::Unparsable {
                        selector: selector.into(),
                        reason: format!("as JSON: {json_err}; as a Python literal: {py_err}"),
                    })
                }
            },
        };
        match value {
            Value::Object(m) => Ok(ModelSpec(m)),
            other => Err(SelectorError::NotAnObject { selector: selector.into(), kind: json_kind(&other) }),
        }
    }

    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }

    pub fn into_map(self) -> Map<String, Value> {
        self.0
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(Value::as_str)
    }

    pub fn model_name(&self) -> Option<&str> {
        self.get_str("model_name")
    }

    pub fn backend(&self) -> Option<&str> {
        self.get_str("backend")
    }

    /// The `model_config` object, empty when absent or not an object.
    pub fn model_config(&self) -> &Map<String, Value> {
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        match self.0.get("model_config") {
            Some(Value::Object(m)) => m,
            _ => EMPTY.get_or_init(Map::new),
        }
    }

    /// A `model_config` value.
    pub fn config(&self, key: &str) -> Option<&Value> {
        self.model_config().get(key)
    }

    pub fn config_str(&self, key: &str) -> Option<&str> {
        self.config(key).and_then(Value::as_str)
    }

    /// A `model_config` flag, read with Python truthiness as clemcore reads it.
    pub fn config_flag(&self, key: &str) -> bool {
        self.config(key).is_some_and(py_truthy)
    }

    pub fn is_mock(&self) -> bool {
        self.model_name().is_some_and(|n| MOCK_NAMES.contains(&n))
    }

    pub fn is_human(&self) -> bool {
        self.model_name().is_some_and(|n| HUMAN_NAMES.contains(&n))
    }

    /// Unifies two specs; `None` on any conflict.
    pub fn unify(&self, other: &ModelSpec) -> Option<ModelSpec> {
        unify_maps(&self.0, &other.0).map(ModelSpec)
    }

    /// Whether the two specs unify.
    pub fn unifies_with(&self, other: &ModelSpec) -> bool {
        maps_unify(&self.0, &other.0)
    }

    /// Unifies a registry entry's object with this selector without copying entries that do not unify.
    pub fn unify_with_entry(&self, entry: &Map<String, Value>) -> Option<ModelSpec> {
        if !maps_unify(entry, &self.0) {
            return None;
        }
        unify_maps(entry, &self.0).map(ModelSpec)
    }
}

impl fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match serde_json::to_string(&self.0) {
            Ok(s) => f.write_str(&s),
            Err(_) => f.write_str("{?}"),
        }
    }
}

impl PartialEq for ModelSpec {
    fn eq(&self, other: &Self) -> bool {
        // indexmap-backed maps compare without regard to order.
        self.0 == other.0
    }
}
impl Eq for ModelSpec {}

impl Hash for ModelSpec {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_value_map(&self.0, state);
    }
}

fn hash_value_map<H: Hasher>(m: &Map<String, Value>, state: &mut H) {
    let mut keys: Vec<&String> = m.keys().collect();
    keys.sort();
    state.write_usize(keys.len());
    for k in keys {
        k.hash(state);
        hash_value(&m[k.as_str()], state);
    }
}

fn hash_value<H: Hasher>(v: &Value, state: &mut H) {
    match v {
        Value::Null => state.write_u8(0),
        Value::Bool(b) => {
            state.write_u8(1);
            b.hash(state)
        }
        Value::Number(n) => {
            state.write_u8(2);
            n.to_string().hash(state)
        }
        Value::String(s) => {
            state.write_u8(3);
            s.hash(state)
        }
        Value::Array(a) => {
            state.write_u8(4);
            state.write_usize(a.len());
            a.iter().for_each(|x| hash_value(x, state))
        }
        Value::Object(m) => {
            state.write_u8(5);
            hash_value_map(m, state)
        }
    }
}

pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Python truthiness of a JSON value.
pub fn py_truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|x| x != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(m) => !m.is_empty(),
    }
}

/// A number as Python sees it: bools are the integers 0 and 1.
enum PyNum {
    Int(i128),
    Float(f64),
}

fn py_num(v: &Value) -> Option<PyNum> {
    match v {
        Value::Bool(b) => Some(PyNum::Int(i128::from(*b))),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Some(PyNum::Int(i128::from(i)))
            } else if let Some(u) = n.as_u64() {
                Some(PyNum::Int(i128::from(u)))
            } else {
                n.as_f64().map(PyNum::Float)
            }
        }
        _ => None,
    }
}

/// Python's `==` between an int and a float: exact, as CPython compares them.
fn int_eq_float(i: i128, f: f64) -> bool {
    f.is_finite() && f.fract() == 0.0 && (-1.7e38..=1.7e38).contains(&f) && (f as i128) == i
}

/// Python `==` on two scalar JSON values (`None` for non-scalars).
fn py_scalar_eq(a: &Value, b: &Value) -> Option<bool> {
    match (a, b) {
        (Value::Array(_) | Value::Object(_), _) | (_, Value::Array(_) | Value::Object(_)) => None,
        (Value::Null, Value::Null) => Some(true),
        (Value::String(x), Value::String(y)) => Some(x == y),
        _ => match (py_num(a), py_num(b)) {
            (Some(PyNum::Int(x)), Some(PyNum::Int(y))) => Some(x == y),
            (Some(PyNum::Float(x)), Some(PyNum::Float(y))) => Some(x == y),
            (Some(PyNum::Int(x)), Some(PyNum::Float(y))) | (Some(PyNum::Float(y)), Some(PyNum::Int(x))) => {
                Some(int_eq_float(x, y))
            }
            _ => Some(false),
        },
    }
}

fn unify_values(a: &Value, b: &Value) -> Option<Value> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => unify_maps(x, y).map(Value::Object),
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                return None;
            }
            x.iter().zip(y).map(|(p, q)| unify_values(p, q)).collect::<Option<Vec<_>>>().map(Value::Array)
        }
        _ => match py_scalar_eq(a, b) {
            // Equal scalars: keep the left side's spelling (the registry entry's when called from selection).
            Some(true) => Some(a.clone()),
            _ => None,
        },
    }
}

fn unify_maps(a: &Map<String, Value>, b: &Map<String, Value>) -> Option<Map<String, Value>> {
    let mut out = Map::with_capacity(a.len() + b.len());
    for (k, va) in a {
        match b.get(k) {
            Some(vb) => {
                out.insert(k.clone(), unify_values(va, vb)?);
            }
            None => {
                out.insert(k.clone(), va.clone());
            }
        }
    }
    for (k, vb) in b {
        if !a.contains_key(k) {
            out.insert(k.clone(), vb.clone());
        }
    }
    Some(out)
}

/// Like [`unify_maps`] but without building the result: selection scans many entries.
fn values_unify(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => maps_unify(x, y),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| values_unify(p, q)),
        _ => py_scalar_eq(a, b) == Some(true),
    }
}

fn maps_unify(a: &Map<String, Value>, b: &Map<String, Value>) -> bool {
    let (small, large) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    small.iter().all(|(k, v)| large.get(k).is_none_or(|w| values_unify(v, w)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: Value) -> ModelSpec {
        match v {
            Value::Object(m) => ModelSpec(m),
            _ => unreachable!("test specs are objects"),
        }
    }

    #[test]
    fn python_equality_of_scalars() {
        let cases = [
            (json!(1), json!(1.0), true),
            (json!(true), json!(1), true),
            (json!(true), json!(1.0), true),
            (json!(false), json!(0), true),
            (json!("1"), json!(1), false),
            (json!(null), json!(false), false),
            (json!(null), json!(null), true),
            (json!(2), json!(2.5), false),
            (json!(9007199254740993_i64), json!(9007199254740992.0), false),
        ];
        for (a, b, expected) in cases {
            assert_eq!(py_scalar_eq(&a, &b), Some(expected), "{a} == {b}");
        }
    }

    #[test]
    fn unification_rules() {
        let entry = spec(json!({"model_name": "m", "backend": "openai", "model_config": {"a": 1, "l": [1, 2]}}));
        assert!(entry.unifies_with(&spec(json!({"backend": "openai"}))));
        assert!(entry.unifies_with(&spec(json!({"model_config": {"a": true}}))));
        assert!(entry.unifies_with(&spec(json!({"model_config": {"l": [1.0, 2]}}))));
        assert!(!entry.unifies_with(&spec(json!({"model_config": {"l": [1]}}))));
        assert!(!entry.unifies_with(&spec(json!({"model_config": 3}))));
        assert!(!entry.unifies_with(&spec(json!({"model_config": null}))));
        assert!(!entry.unifies_with(&spec(json!({"backend": "anthropic"}))));
        let u = entry.unify(&spec(json!({"extra": {"x": 1}}))).expect("unifies");
        assert_eq!(u.get("extra"), Some(&json!({"x": 1})));
        assert_eq!(u.backend(), Some("openai"));
    }

    #[test]
    fn selectors() {
        assert_eq!(ModelSpec::parse_selector("gpt-4o").expect("name"), ModelSpec::from_name("gpt-4o"));
        let s = ModelSpec::parse_selector(r#"{"model_name": "x", "model_config": {"t": 1}}"#).expect("json");
        assert_eq!(s.config("t"), Some(&json!(1)));
        let p = ModelSpec::parse_selector("{'model_name': \"it's\", 'flag': True, 'n': None}").expect("python");
        assert_eq!(p.model_name(), Some("it's"));
        assert_eq!(p.get("flag"), Some(&json!(true)));
        assert_eq!(p.get("n"), Some(&json!(null)));
        assert!(matches!(ModelSpec::parse_selector("{'a': "), Err(SelectorError::Unparsable { .. })));
        assert!(matches!(ModelSpec::parse_selector("  "), Err(SelectorError::Empty)));
    }

    /// Before: py_literal took 2 s for a Python dict nested 18 deep (doubling per level), and JSON nested past
    /// serde_json's 128 levels fell through to it and ran for minutes; now both are refused in one pass.
    #[test]
    fn deep_selectors_are_refused_quickly() {
        let json = |d: usize| format!("{}1{}", r#"{"a": "#.repeat(d), "}".repeat(d));
        let python = |d: usize| format!("{}1{}", "{'a': ".repeat(d), "}".repeat(d));
        let list = |d: usize| format!("{{'a': {}1{}}}", "[".repeat(d - 1), "]".repeat(d - 1));
        for deep in [json(10_000), python(10_000), list(10_000), json(65), python(65)] {
            let started = std::time::Instant::now();
            let e = ModelSpec::parse_selector(&deep).expect_err("too deep");
            assert!(started.elapsed() < std::time::Duration::from_secs(1), "{:?}", started.elapsed());
            assert_eq!(e, SelectorError::TooDeep { limit: 64 });
            assert!(e.to_string().contains("more than 64 levels deep"), "{e}");
        }
        for ok in [json(60), python(60), list(60), json(64), python(64)] {
            let started = std::time::Instant::now();
            let s = ModelSpec::parse_selector(&ok).expect("parses");
            assert!(s.get("a").is_some());
            assert!(started.elapsed() < std::time::Duration::from_secs(1), "{:?}", started.elapsed());
        }
    }

    #[test]
    fn equality_and_hash_ignore_key_order() {
        use std::collections::hash_map::DefaultHasher;
        let a = spec(json!({"a": 1, "b": {"c": [1, 2], "d": "x"}}));
        let b = spec(json!({"b": {"d": "x", "c": [1, 2]}, "a": 1}));
        let c = spec(json!({"a": 2, "b": {"c": [1, 2], "d": "x"}}));
        assert_eq!(a, b);
        assert_ne!(a, c);
        let h = |s: &ModelSpec| {
            let mut h = DefaultHasher::new();
            s.hash(&mut h);
            h.finish()
        };
        assert_eq!(h(&a), h(&b));
    }
}
