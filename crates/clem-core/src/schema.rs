//! What a registry entry may contain, and the strict check that reports every problem of an entry.
//!
//! Common keys are checked here; each backend describes its own keys with a [`BackendSchema`] (the backends
//! crate owns those, so adding a backend never touches this file).

use serde_json::{Map, Value};

use crate::pyregex::PyRegex;
use crate::spec::json_kind;

/// The type a key's value must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    Str,
    /// A string from a fixed set.
    OneOf(&'static [&'static str]),
    Bool,
    /// A non-negative integer.
    Count,
    /// Any number.
    Number,
    StrList,
    Object,
    /// A Python regular expression.
    Regex,
    /// A Jinja chat template.
    Template,
    /// Any JSON value.
    Any,
    /// A flag clemcore reads that clemrs cannot honour: `false` is accepted, `true` is an error saying why and
    /// what to do instead (the loader refuses it too).
    Unsupported(&'static str),
}

/// A key and its type.
pub type KeySpec = (&'static str, KeyType);

/// The keys a backend reads from an entry.
#[derive(Clone, Copy, Debug)]
pub struct BackendSchema {
    pub name: &'static str,
    /// Other names of the same backend.
    pub aliases: &'static [&'static str],
    /// Top-level keys the backend needs (`model_id`, `huggingface_id`).
    pub entry_required: &'static [KeySpec],
    /// Top-level keys the backend reads when present.
    pub entry_optional: &'static [KeySpec],
    pub config_required: &'static [KeySpec],
    pub config_optional: &'static [KeySpec],
}

impl BackendSchema {
    pub fn answers_to(&self, backend: &str) -> bool {
        self.name == backend || self.aliases.contains(&backend)
    }
}

/// How bad a problem is: an error stops the entry from being used, a warning does not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

/// One problem of one entry, with everything needed to find it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub severity: Severity,
    pub file: String,
    /// Index of the entry in its file (0-based), `None` for file-level problems.
    pub index: Option<usize>,
    pub model_name: Option<String>,
    /// Dotted key path, e.g. `model_config.eos_to_cull`.
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{sev}: {}", self.file)?;
        if let Some(i) = self.index {
            write!(f, ": entry {i}")?;
        }
        if let Some(name) = &self.model_name {
            write!(f, " ({name})")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Metadata every entry should have (readme: mandatory); missing ones are warnings since nothing breaks.
const METADATA: &[KeySpec] = &[
    ("release_date", KeyType::Str),
    ("open_weight", KeyType::Bool),
    ("parameters", KeyType::Str),
    ("languages", KeyType::StrList),
    ("context_size", KeyType::Str),
    ("license", KeyType::Object),
];

/// Checks one entry; `schemas` are the backends this build knows.
pub fn check_entry(entry: &Value, file: &str, index: usize, schemas: &[BackendSchema]) -> Vec<Problem> {
    let model_name = entry.get("model_name").and_then(Value::as_str).map(String::from);
    let mut out = Vec::new();
    let mut report = |severity: Severity, key: &str, message: String| {
        out.push(Problem {
            severity,
            file: file.into(),
            index: Some(index),
            model_name: model_name.clone(),
            key: key.into(),
            message,
        })
    };
    let Value::Object(obj) = entry else {
        report(Severity::Error, "", format!("an entry must be an object, not {}", json_kind(entry)));
        return out;
    };

    match obj.get("model_name") {
        None => report(Severity::Error, "model_name", "missing (required)".into()),
        Some(Value::String(s)) if s.trim().is_empty() => report(Severity::Error, "model_name", "is empty".into()),
        Some(Value::String(_)) => {}
        Some(v) => report(Severity::Error, "model_name", format!("must be a string, not {}", json_kind(v))),
    }

    for (key, ty) in METADATA {
        match obj.get(*key) {
            None => report(Severity::Warning, key, "missing (documented as mandatory metadata)".into()),
            Some(v) => {
                if let Err(m) = check_type(v, *ty) {
                    report(Severity::Error, key, m);
                }
            }
        }
    }
    if let Some(Value::String(d)) = obj.get("release_date") {
        if chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").is_err() || d.len() != 10 {
            report(Severity::Error, "release_date", format!("{d:?} is not a date in YYYY-MM-DD form"));
        }
    }
    if let Some(Value::String(c)) = obj.get("context_size") {
        if !c.is_empty() && parse_count(c).is_none() {
            report(Severity::Error, "context_size", format!("{c:?} is not a token count like \"128k\" or \"4096\""));
        }
    }
    if let Some(Value::String(p)) = obj.get("parameters") {
        if !p.is_empty() && parse_count(p).is_none() {
            report(Severity::Error, "parameters", format!("{p:?} is not a parameter count like \"7B\" or \"135M\""));
        }
    }
    if let Some(Value::Object(lic)) = obj.get("license") {
        for k in ["name", "url"] {
            match lic.get(k) {
                None => report(Severity::Warning, &format!("license.{k}"), "missing".into()),
                Some(Value::String(_)) => {}
                Some(v) => {
                    report(Severity::Error, &format!("license.{k}"), format!("must be a string, not {}", json_kind(v)))
                }
            }
        }
    }
    let config = match obj.get("model_config") {
        None => None,
        Some(Value::Object(m)) => Some(m),
        Some(v) => {
            report(Severity::Error, "model_config", format!("must be an object, not {}", json_kind(v)));
            None
        }
    };

    let backend = match obj.get("backend") {
        None => {
            report(Severity::Error, "backend", "missing (required)".into());
            return out;
        }
        Some(Value::String(s)) => s.as_str(),
        Some(v) => {
            report(Severity::Error, "backend", format!("must be a string, not {}", json_kind(v)));
            return out;
        }
    };
    let Some(schema) = schemas.iter().find(|s| s.answers_to(backend)) else {
        let known: Vec<&str> = schemas.iter().map(|s| s.name).collect();
        let hint = crate::suggest::did_you_mean(
            backend,
            schemas.iter().flat_map(|s| s.aliases.iter().chain([&s.name])).copied(),
        );
        report(
            Severity::Error,
            "backend",
            format!("backend {backend:?} does not exist{hint} (known backends: {})", known.join(", ")),
        );
        return out;
    };

    for (key, ty) in schema.entry_required {
        match obj.get(*key) {
            None => report(Severity::Error, key, format!("missing (required by the {} backend)", schema.name)),
            Some(v) => {
                if let Err(m) = check_value(v, *ty) {
                    report(Severity::Error, key, m)
                }
            }
        }
    }
    for (key, ty) in schema.entry_optional {
        if let Some(v) = obj.get(*key) {
            if let Err(m) = check_value(v, *ty) {
                report(Severity::Error, key, m)
            }
        }
    }
    let empty = Map::new();
    let config = config.unwrap_or(&empty);
    if obj.get("model_config").is_none() && !schema.config_required.is_empty() {
        report(Severity::Error, "model_config", format!("missing (the {} backend needs it)", schema.name));
    }
    for (key, ty) in schema.config_required {
        let path = format!("model_config.{key}");
        match config.get(*key) {
            None => report(Severity::Error, &path, format!("missing (required by the {} backend)", schema.name)),
            Some(v) => {
                if let Err(m) = check_value(v, *ty) {
                    report(Severity::Error, &path, m)
                }
            }
        }
    }
    for (key, ty) in schema.config_optional {
        if let Some(v) = config.get(*key) {
            if let Err(m) = check_value(v, *ty) {
                report(Severity::Error, &format!("model_config.{key}"), m)
            }
        }
    }
    // Every backend may carry prices (clem run's cost, clem list models -v).
    if let Some(pricing) = config.get("pricing") {
        if let Err(m) = crate::usage::Pricing::from_value(pricing) {
            let (key, message) = match m.split_once(": ") {
                Some((k, rest)) if k.ends_with("_per_million") => (format!("model_config.pricing.{k}"), rest.into()),
                _ => ("model_config.pricing".to_string(), m),
            };
            report(Severity::Error, &key, message);
        }
    }
    // Relations between keys, as the registry readme states them.
    let flag = |k: &str| config.get(k).is_some_and(crate::spec::py_truthy);
    if flag("cot_output") && !config.contains_key("cot_end_tag") {
        report(Severity::Error, "model_config.cot_end_tag", "missing, but cot_output is true".into());
    }
    // An error, as every loader that renders templates refuses it: clemcore's llamacpp fails on the missing key,
    // and its huggingface_local silently keeps the tokenizer's own template (no "generic" one exists in current
    // transformers, which raises when the tokenizer has none), i.e. not what `false` asked for.
    let renders_templates =
        schema.config_required.iter().chain(schema.config_optional).any(|(k, _)| *k == "premade_chat_template");
    let custom_missing = config.get("custom_chat_template").is_none_or(|t| t.as_str() == Some(""));
    if renders_templates && config.get("premade_chat_template") == Some(&Value::Bool(false)) && custom_missing {
        report(
            Severity::Error,
            "model_config.custom_chat_template",
            "missing while premade_chat_template is false: set premade_chat_template to true to use the model's own \
             template, or give custom_chat_template"
                .into(),
        );
    }
    out
}

fn check_type(v: &Value, ty: KeyType) -> Result<(), String> {
    let ok = match ty {
        KeyType::Str | KeyType::OneOf(_) | KeyType::Regex | KeyType::Template => v.is_string(),
        KeyType::Bool | KeyType::Unsupported(_) => v.is_boolean(),
        KeyType::Count => v.as_u64().is_some(),
        KeyType::Number => v.is_number(),
        KeyType::StrList => v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
        KeyType::Object => v.is_object(),
        KeyType::Any => true,
    };
    if ok {
        return Ok(());
    }
    let want = match ty {
        KeyType::Str | KeyType::OneOf(_) => "a string",
        KeyType::Regex => "a string holding a Python regular expression",
        KeyType::Template => "a string holding a Jinja template",
        KeyType::Bool | KeyType::Unsupported(_) => "true or false",
        KeyType::Count => "a non-negative integer",
        KeyType::Number => "a number",
        KeyType::StrList => "a list of strings",
        KeyType::Object => "an object",
        KeyType::Any => "anything",
    };
    Err(format!("must be {want}, not {}", describe(v)))
}

fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("the string {s:?}"),
        Value::Number(n) => format!("the number {n}"),
        Value::Bool(b) => format!("{b}"),
        other => json_kind(other).to_string(),
    }
}

/// Type check plus content check (regex compiles, template parses, value in its set).
pub fn check_value(v: &Value, ty: KeyType) -> Result<(), String> {
    check_type(v, ty)?;
    let s = v.as_str().unwrap_or_default();
    match ty {
        KeyType::OneOf(allowed) if !allowed.contains(&s) => Err(format!(
            "{s:?} is not one of {}",
            allowed.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", ")
        )),
        KeyType::Regex => {
            compiled(s, true, || PyRegex::new(s).map(|_| ()).map_err(|e| format!("does not compile: {}", e.reason)))
        }
        KeyType::Template => compiled(s, false, || {
            crate::template::ChatTemplate::new(s, "custom_chat_template").map(|_| ()).map_err(|e| e.to_string())
        }),
        KeyType::Unsupported(why) if v.as_bool() == Some(true) => Err(why.to_string()),
        _ => Ok(()),
    }
}

/// Distinct patterns and templates remembered per thread: registries repeat the same few thousands of times.
const COMPILED_MEMO_MAX: usize = 4096;

/// The outcome of compiling `source` (a regex when `regex`, else a template), computed once per thread.
fn compiled(source: &str, regex: bool, compile: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    type Memo = std::collections::HashMap<String, Result<(), String>>;
    thread_local! {
        static MEMO: std::cell::RefCell<[Memo; 2]> = Default::default();
    }
    let kind = usize::from(regex);
    if let Some(hit) = MEMO.with(|m| m.borrow()[kind].get(source).cloned()) {
        return hit;
    }
    let result = compile();
    MEMO.with(|m| {
        let memo = &mut m.borrow_mut()[kind];
        if memo.len() >= COMPILED_MEMO_MAX {
            memo.clear();
        }
        memo.insert(source.to_string(), result.clone());
    });
    result
}

/// Reads counts like `"128k"`, `"7B"`, `"1.5M"`, `"4096"`; `None` when it is not one.
pub fn parse_count(s: &str) -> Option<f64> {
    let t = s.trim().trim_start_matches('~');
    let (num, mult) = match t.chars().last()? {
        'k' | 'K' => (&t[..t.len() - 1], 1e3),
        'm' | 'M' => (&t[..t.len() - 1], 1e6),
        'b' | 'B' => (&t[..t.len() - 1], 1e9),
        't' | 'T' => (&t[..t.len() - 1], 1e12),
        _ => (t, 1.0),
    };
    let n: f64 = num.trim().parse().ok()?;
    (n.is_finite() && n >= 0.0).then_some(n * mult)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TEST_SCHEMA: BackendSchema = BackendSchema {
        name: "local",
        aliases: &[],
        entry_required: &[("huggingface_id", KeyType::Str)],
        entry_optional: &[],
        config_required: &[("eos_to_cull", KeyType::Regex), ("premade_chat_template", KeyType::Bool)],
        config_optional: &[("padding_side", KeyType::OneOf(&["left", "right"])), ("cot_output", KeyType::Bool)],
    };

    fn keys(problems: &[Problem]) -> Vec<(Severity, String)> {
        problems.iter().map(|p| (p.severity, p.key.clone())).collect()
    }

    #[test]
    fn an_unsupported_flag_is_refused_only_when_set() {
        let ty = KeyType::Unsupported("not supported; remove it");
        assert_eq!(check_value(&json!(false), ty), Ok(()));
        assert_eq!(check_value(&json!(true), ty), Err("not supported; remove it".to_string()));
        assert_eq!(check_value(&json!("yes"), ty), Err("must be true or false, not the string \"yes\"".to_string()));
    }

    #[test]
    fn reports_every_problem() {
        let entry = json!({
            "model_name": "m", "backend": "local", "release_date": "2024-13-01",
            "model_config": {"eos_to_cull": "(", "padding_side": "middle", "cot_output": true}
        });
        let p = check_entry(&entry, "r.json", 3, &[TEST_SCHEMA]);
        let k = keys(&p);
        assert!(k.contains(&(Severity::Error, "release_date".into())));
        assert!(k.contains(&(Severity::Error, "huggingface_id".into())));
        assert!(k.contains(&(Severity::Error, "model_config.eos_to_cull".into())));
        assert!(k.contains(&(Severity::Error, "model_config.premade_chat_template".into())));
        assert!(k.contains(&(Severity::Error, "model_config.padding_side".into())));
        assert!(k.contains(&(Severity::Error, "model_config.cot_end_tag".into())));
        assert!(k.contains(&(Severity::Warning, "languages".into())));
        let line = p.iter().find(|p| p.key == "model_config.eos_to_cull").map(ToString::to_string).unwrap_or_default();
        assert!(line.starts_with("error: r.json: entry 3 (m): model_config.eos_to_cull: does not compile"), "{line}");
    }

    /// `model_config.pricing` is checked for every backend (before: any value passed the check).
    #[test]
    fn pricing_is_checked_for_any_backend() {
        let entry = |pricing: serde_json::Value| {
            json!({"model_name": "m", "backend": "local", "huggingface_id": "x",
                   "model_config": {"eos_to_cull": "x", "premade_chat_template": true, "pricing": pricing}})
        };
        let errors = |pricing| {
            let p = check_entry(&entry(pricing), "r.json", 0, &[TEST_SCHEMA]);
            p.into_iter().filter(|p| p.severity == Severity::Error).map(|p| p.key).collect::<Vec<_>>()
        };
        assert!(errors(json!({"input_per_million": 2.5, "output_per_million": 10})).is_empty());
        assert_eq!(errors(json!({"input_per_million": 2.5})), ["model_config.pricing.output_per_million"]);
        assert_eq!(
            errors(json!({"input_per_million": "2.5", "output_per_million": 1})),
            ["model_config.pricing.input_per_million"]
        );
        assert_eq!(errors(json!(3)), ["model_config.pricing"]);
    }

    /// premade_chat_template false without a custom template: an error, as the loaders refuse it (before: a
    /// warning that "a generic template will be used", then `clem generate` refused the entry).
    #[test]
    fn no_template_at_all_is_an_error() {
        let entry = |config: serde_json::Value| json!({"model_name": "m", "backend": "local", "huggingface_id": "x", "model_config": config});
        let template_problems = |config| {
            check_entry(&entry(config), "r.json", 0, &[TEST_SCHEMA])
                .into_iter()
                .filter(|p| p.key == "model_config.custom_chat_template")
                .map(|p| p.severity)
                .collect::<Vec<_>>()
        };
        let off = json!({"eos_to_cull": "x", "premade_chat_template": false});
        assert_eq!(template_problems(off), [Severity::Error]);
        let empty = json!({"eos_to_cull": "x", "premade_chat_template": false, "custom_chat_template": ""});
        assert_eq!(template_problems(empty), [Severity::Error]);
        let custom = json!({"eos_to_cull": "x", "premade_chat_template": false, "custom_chat_template": "{{ 1 }}"});
        assert!(template_problems(custom).is_empty());
        assert!(template_problems(json!({"eos_to_cull": "x", "premade_chat_template": true})).is_empty());
        // A backend that renders no template is not concerned.
        let remote = BackendSchema { name: "remote", config_required: &[], config_optional: &[], ..TEST_SCHEMA };
        let p = check_entry(
            &json!({"model_name": "m", "backend": "remote", "huggingface_id": "x",
                    "model_config": {"premade_chat_template": false}}),
            "r.json",
            0,
            &[remote],
        );
        assert!(p.iter().all(|p| p.key != "model_config.custom_chat_template"), "{p:?}");
    }

    #[test]
    fn unknown_backend_and_non_objects() {
        let p = check_entry(&json!({"model_name": "x", "backend": "alephalpha"}), "f", 0, &[TEST_SCHEMA]);
        assert!(p.iter().any(|p| p.key == "backend" && p.message.contains("\"alephalpha\" does not exist")));
        let p = check_entry(&json!({"model_name": "x", "backend": "lcal"}), "f", 0, &[TEST_SCHEMA]);
        assert!(p.iter().any(|p| p.message.starts_with("backend \"lcal\" does not exist; did you mean \"local\"?")));
        let p = check_entry(&json!([1]), "f", 1, &[TEST_SCHEMA]);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].severity, Severity::Error);
    }

    #[test]
    fn counts() {
        assert_eq!(parse_count("128k"), Some(128_000.0));
        assert_eq!(parse_count("7B"), Some(7e9));
        assert_eq!(parse_count("1.5M"), Some(1.5e6));
        assert_eq!(parse_count("4096"), Some(4096.0));
        assert_eq!(parse_count("lots"), None);
    }
}
