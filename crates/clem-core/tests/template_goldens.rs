//! Chat templates rendered byte-identically to transformers' jinja2 environment.
//!
//! `tests/goldens/templates.json` holds what Python jinja2 (configured as transformers configures it,
//! see `tests/goldens/make_template_goldens.py`) renders for every `custom_chat_template` of the clemcore
//! fixture registry and for the templates in `tests/goldens/inline_templates.json`, over the
//! conversations of `tests/goldens/conversations.json`, with and without the generation prompt.
//! The fixture templates are read from `../shared/fixtures/` at test time (never copied here).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clem_core::template::{ChatTemplate, RenderOptions};
use serde_json::{Map, Value};

const FIXTURE_TEMPLATES: usize = 23;

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixtures_dir() -> PathBuf {
    manifest_dir().join("../../../shared/fixtures")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn goldens_dir() -> PathBuf {
    manifest_dir().join("tests/goldens")
}

/// The conversations, the variables common to every rendering and the fixed clock.
struct Conversations {
    by_id: BTreeMap<String, Value>,
    special_tokens: Map<String, Value>,
    now: chrono::NaiveDateTime,
}

fn conversations() -> Conversations {
    let data = read_json(&goldens_dir().join("conversations.json"));
    let by_id = data["conversations"]
        .as_array()
        .expect("conversations.json has a conversations list")
        .iter()
        .map(|c| (c["id"].as_str().expect("conversation id").to_string(), c.clone()))
        .collect();
    let special_tokens = data["special_tokens"].as_object().expect("special_tokens object").clone();
    let now = chrono::NaiveDateTime::parse_from_str(data["now"].as_str().expect("now string"), "%Y-%m-%dT%H:%M:%S")
        .expect("now is an ISO date-time");
    Conversations { by_id, special_tokens, now }
}

/// Where two strings first differ, with some context, as escaped (diff-friendly) text.
fn describe_difference(expected: &str, actual: &str) -> String {
    let at = expected.bytes().zip(actual.bytes()).take_while(|(a, b)| a == b).count();
    let mut start = at.saturating_sub(60);
    while !expected.is_char_boundary(start) || !actual.is_char_boundary(start) {
        start -= 1;
    }
    let context = |s: &str| {
        let mut end = (at + 60).min(s.len());
        while !s.is_char_boundary(end) {
            end += 1;
        }
        format!("{:?}", &s[start.min(s.len())..end])
    };
    let line = expected[..at.min(expected.len())].matches('\n').count() + 1;
    format!(
        "first difference at byte {at} (line {line}):\n      expected …{}…\n      actual   …{}…\n    full expected: {expected:?}\n    full actual:   {actual:?}",
        context(expected),
        context(actual)
    )
}

/// Renders every golden case of the given templates; returns (cases checked, mismatch reports).
fn check_cases(templates: &BTreeMap<String, String>, convs: &Conversations) -> (usize, Vec<String>) {
    let goldens = read_json(&goldens_dir().join("templates.json"));
    let mut compiled: BTreeMap<&str, ChatTemplate> = BTreeMap::new();
    let mut checked = 0;
    let mut failures = Vec::new();
    for case in goldens.as_array().expect("templates.json is a list") {
        let model = case["model_name"].as_str().expect("model_name");
        let Some(source) = templates.get(model) else { continue };
        let conversation_id = case["conversation_id"].as_str().expect("conversation_id");
        let add_generation_prompt = case["add_generation_prompt"].as_bool().expect("add_generation_prompt");
        let label = format!("{model} / {conversation_id} / add_generation_prompt={add_generation_prompt}");
        if !compiled.contains_key(model) {
            match ChatTemplate::new(source, model) {
                Ok(t) => {
                    compiled.insert(model, t);
                }
                Err(e) => {
                    failures.push(format!("{label}: does not compile: {e}"));
                    continue;
                }
            }
        }
        let template = &compiled[model];
        let conversation = &convs.by_id[conversation_id];
        let mut variables = convs.special_tokens.clone();
        if let Some(extra) = conversation.get("variables").and_then(Value::as_object) {
            variables.extend(extra.clone());
        }
        let opts = RenderOptions { add_generation_prompt, variables, now: Some(convs.now) };
        let result = template.render(&conversation["messages"], &opts);
        checked += 1;
        match (case.get("expected").and_then(Value::as_str), result) {
            (Some(expected), Ok(actual)) if expected == actual => {}
            (Some(expected), Ok(actual)) => {
                failures.push(format!("{label}: output differs\n    {}", describe_difference(expected, &actual)))
            }
            (Some(_), Err(e)) => failures.push(format!("{label}: jinja2 renders, Rust fails: {e}")),
            (None, Ok(actual)) => failures.push(format!(
                "{label}: jinja2 fails ({}: {}), Rust renders {actual:?}",
                case["error_type"], case["error"]
            )),
            (None, Err(e)) => {
                // The template's own raise_exception: same message, same line. Other jinja2 errors
                // (undefined values, type errors) are worded differently by minijinja: failing suffices.
                if case["error_type"] == "TemplateError" {
                    let message = case["error"].as_str().expect("error message");
                    let line = case["error_line"].as_u64().map(|l| l as usize);
                    if e.message != message || e.line != line {
                        failures.push(format!(
                            "{label}: raise_exception differs\n      expected line {line:?}: {message:?}\n      actual   line {:?}: {:?}",
                            e.line, e.message
                        ));
                    }
                }
            }
        }
    }
    (checked, failures)
}

fn report(what: &str, checked: usize, failures: &[String]) {
    if !failures.is_empty() {
        let mut text = String::new();
        for f in failures {
            let _ = writeln!(text, "- {f}");
        }
        panic!("{} of {checked} {what} golden cases differ from jinja2:\n{text}", failures.len());
    }
    eprintln!("{checked} {what} golden cases rendered byte-identically to jinja2");
}

#[test]
fn fixture_templates_render_like_jinja2() {
    let fixtures = fixtures_dir();
    if !fixtures.is_dir() {
        eprintln!("SKIP: fixture folder {} not found", fixtures.display());
        return;
    }
    let registry = read_json(&fixtures.join("clemcore-model-registry-230.json"));
    let templates: BTreeMap<String, String> = registry
        .as_array()
        .expect("the registry is a list")
        .iter()
        .filter_map(|entry| {
            let template = entry["model_config"]["custom_chat_template"].as_str()?;
            Some((entry["model_name"].as_str()?.to_string(), template.to_string()))
        })
        .collect();
    assert_eq!(templates.len(), FIXTURE_TEMPLATES, "custom chat templates in the fixture registry");

    let convs = conversations();
    let (checked, failures) = check_cases(&templates, &convs);
    let expected_cases = FIXTURE_TEMPLATES * convs.by_id.len() * 2;
    assert_eq!(checked, expected_cases, "every fixture template has a golden for every conversation");
    report("fixture template", checked, &failures);
}

#[test]
fn inline_templates_render_like_jinja2() {
    let inline = read_json(&goldens_dir().join("inline_templates.json"));
    let templates: BTreeMap<String, String> = inline
        .as_object()
        .expect("inline_templates.json is an object")
        .iter()
        .map(|(name, source)| (name.clone(), source.as_str().expect("template source").to_string()))
        .collect();
    assert!(templates.len() >= 4, "inline templates: {}", templates.len());
    let convs = conversations();
    let (checked, failures) = check_cases(&templates, &convs);
    assert_eq!(checked, templates.len() * convs.by_id.len() * 2, "every inline template has all its goldens");
    report("inline template", checked, &failures);
}
