//! `clem registry import FILE [-o OUT]`: a registry clemrs loads, made from an older clemcore one (clemcore 3.4's
//! 230 entries, say). Every entry clemrs's own check accepts is kept as it is, in file order; the others are
//! listed on stderr, grouped, with the reason and what would make them work: backends clemrs does not have
//! (`alephalpha`, `slurk`), multimodal models (`huggingface_multimodal`; clemcore 3.7's `model_config.multimodal`),
//! 8/4-bit loading the huggingface_local loader refuses, entries missing a key a backend needs (openrouter without
//! `model_id`), or any other error of the check. Without `-o` the registry goes to stdout.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clem_core::registry::{has_errors, Registry};
use clem_core::schema::{BackendSchema, Severity};
use serde_json::Value;

/// Why an entry was not converted, and what the user can do about it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Refusal {
    pub reason: String,
    pub fix: String,
}

/// The outcome for one entry: kept (as it is), or refused with why.
pub fn convert(entry: &Value, file: &str, index: usize, schemas: &[BackendSchema]) -> Result<Value, Refusal> {
    let backend = entry.get("backend").and_then(Value::as_str).unwrap_or("");
    let refuse = |reason: String, fix: &str| Err(Refusal { reason, fix: fix.to_string() });
    let multimodal_fix = "serve the model with vLLM (`vllm serve HUGGINGFACE_ID`) and register it with `--backend \
                          openai_compatible --set model_id=HUGGINGFACE_ID --set \
                          model_config.multimodality.single_image=true` (base_url in key.json's openai_compatible \
                          section)";
    let flag = |key: &str| entry.pointer(&format!("/model_config/{key}")).is_some_and(clem_core::spec::py_truthy);
    match backend {
        // clemcore 3.7 marks its multimodal huggingface_local models so.
        "huggingface_local" if flag("multimodal") => {
            return refuse(
                "a multimodal huggingface_local model (model_config.multimodal); clemrs's huggingface_local runs \
                 text-only causal LMs"
                    .into(),
                multimodal_fix,
            )
        }
        _ if flag("load_in_8bit") || flag("load_in_4bit") => {
            return refuse(
                "model_config.load_in_8bit/load_in_4bit (bitsandbytes quantisation): clemrs runs weights as stored \
                 and refuses it when loading"
                    .into(),
                "remove load_in_8bit/load_in_4bit (the model then needs its full-precision memory), or use a \
                 quantised GGUF of it with the llamacpp backend",
            )
        }
        "alephalpha" => {
            return refuse(
                "backend \"alephalpha\" (Aleph Alpha's Luminous API): clemrs has no such backend".into(),
                "none in clemrs; if a provider serves the model behind an OpenAI-compatible API, register it with \
                 `--backend openai_compatible --set model_id=ID` and that API's base_url and api_key in key.json's \
                 openai_compatible section",
            )
        }
        "slurk" => {
            return refuse(
                "backend \"slurk\" (clembench's bridge to players in a slurk chat room): clemrs has no such backend"
                    .into(),
                "for a human player at the terminal use `-m human`",
            )
        }
        "huggingface_multimodal" => {
            return refuse(
                "backend \"huggingface_multimodal\": a multimodal model (processor and vision encoder); clemrs's \
                 huggingface_local runs text-only causal LMs"
                    .into(),
                multimodal_fix,
            )
        }
        _ => {}
    }
    let problems = clem_core::schema::check_entry(entry, file, index, schemas);
    if !has_errors(&problems) {
        return Ok(entry.clone());
    }
    let errors: Vec<&clem_core::schema::Problem> = problems.iter().filter(|p| p.severity == Severity::Error).collect();
    if backend == "openrouter" && errors.iter().all(|p| p.key == "model_id") {
        return refuse(
            "backend \"openrouter\" without model_id (OpenRouter's name of the model)".into(),
            "add model_id, e.g. `clem register model NAME --backend openrouter --set model_id=openai/gpt-oss-120b \
             ...`; the entries' huggingface_id is often, not always, the OpenRouter id (see openrouter.ai/models)",
        );
    }
    let what: Vec<String> = errors.iter().map(|p| format!("{}: {}", p.key, p.message)).collect();
    refuse(what.join("; "), "fix the keys named (`clem registry check FILE` lists every problem)")
}

/// `clem registry import`.
pub fn run(file: &Path, output: Option<&Path>) -> anyhow::Result<ExitCode> {
    let mut registry = Registry::default();
    registry.add_file(file)?;
    if let Some(out) = output {
        if out.exists() && same_file(out, file) {
            bail!("{}: is the registry being imported; write the new one elsewhere", out.display());
        }
    }
    let schemas = clem_backends::schemas();
    let mut kept = Vec::new();
    let mut refused: BTreeMap<Refusal, Vec<String>> = BTreeMap::new();
    for e in registry.entries() {
        match convert(&e.value, &e.file, e.index, &schemas) {
            Ok(v) => kept.push(v),
            Err(why) => {
                let name = e.model_name().map_or(format!("entry {}", e.index), |n| format!("{n} (entry {})", e.index));
                refused.entry(why).or_default().push(name);
            }
        }
    }
    let total = registry.entries().len();
    let text = serde_json::to_string_pretty(&Value::Array(kept.clone()))? + "\n";
    match output {
        Some(out) => {
            super::register::write_atomic(out, &text, false).with_context(|| format!("writing {}", out.display()))?;
            eprintln!("clem: {}: {} of {total} entries of {} converted", out.display(), kept.len(), file.display());
        }
        None => {
            print!("{text}");
            eprintln!("clem: {} of {total} entries of {} converted (on stdout)", kept.len(), file.display());
        }
    }
    let n_refused: usize = refused.values().map(Vec::len).sum();
    if n_refused > 0 {
        eprintln!("clem: {n_refused} entries not converted:");
    }
    for (why, names) in &refused {
        eprintln!("  {} entr{}: {}", names.len(), if names.len() == 1 { "y" } else { "ies" }, names.join(", "));
        eprintln!("    why: {}", why.reason);
        eprintln!("    to use: {}", why.fix);
    }
    Ok(if kept.is_empty() && total > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn outcome(entry: Value) -> Result<Value, Refusal> {
        convert(&entry, "old.json", 0, &clem_backends::schemas())
    }

    #[test]
    fn each_kind_of_old_entry() {
        let meta = json!({"release_date": "2024-08-06", "open_weight": false, "parameters": "", "languages": ["en"],
                          "context_size": "128k", "license": {"name": "x", "url": "y"}});
        let with = |extra: Value| {
            let mut e = meta.clone();
            e.as_object_mut().expect("object").extend(extra.as_object().expect("object").clone());
            e
        };
        let ok = with(json!({"model_name": "gpt-4o-2024-08-06", "backend": "openai", "model_id": "gpt-4o-2024-08-06"}));
        assert_eq!(outcome(ok.clone()), Ok(ok));
        let why = |e: Value| outcome(e).expect_err("refused").reason;
        assert!(why(json!({"model_name": "luminous-base", "backend": "alephalpha"})).contains("alephalpha"));
        assert!(why(json!({"model_name": "slurk", "backend": "slurk"})).contains("slurk"));
        assert!(why(json!({"model_name": "llava", "backend": "huggingface_multimodal"})).contains("multimodal"));
        let or = outcome(with(json!({"model_name": "g", "backend": "openrouter", "huggingface_id": "openai/g"})));
        let or = or.expect_err("no model_id");
        assert!(or.reason.contains("without model_id") && or.fix.contains("add model_id"), "{or:?}");
        // clemcore 3.7's multimodal and 8-bit entries pass the check but would not load.
        let hf = json!({"model_name": "internvl3-14b", "backend": "huggingface_local", "huggingface_id": "x",
                        "model_config": {"premade_chat_template": true, "eos_to_cull": "x"}});
        assert!(outcome(with(hf.clone())).is_ok());
        let mut mm = with(hf.clone());
        mm["model_config"]["multimodal"] = json!(true);
        assert!(outcome(mm).expect_err("multimodal").reason.contains("multimodal"));
        let mut q = with(hf);
        q["model_config"]["load_in_8bit"] = json!(true);
        assert!(outcome(q).expect_err("8-bit").reason.contains("load_in_8bit"));
        // Any other error of the check is named with its key.
        let bad = why(with(json!({"model_name": "m", "backend": "openai", "model_id": 3})));
        assert!(bad.starts_with("model_id: must be a string"), "{bad}");
    }
}
