//! Wiring of the llamacpp backend on tiny random-weight GGUFs written by `support/make_tiny_gguf.py` (PyPI
//! `gguf`): templates from the GGUF metadata or the entry, bos/eos fallback strings, the context check, batches,
//! seeds, CoT cleaning, GPU requests on a CPU-only build, and split GGUFs with `additional_files`.
//! Skipped (with the reason) without python3 or `gguf`, except under CI, where that fails.

#![cfg(feature = "llamacpp")]

#[path = "support/llamacpp_common.rs"]
mod common;

use clem_core::{GenArgs, Message, ModelError};
use common::{load, spec, tiny_gguf};
use serde_json::json;

fn user(text: &str) -> Vec<Message> {
    vec![Message::user(text)]
}

#[test]
fn template_from_metadata_with_gguf_special_tokens_and_recorded_objects() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(_) = tiny_gguf(tmp.path(), "tiny.gguf", &[]) else { return };
    // The GGUF names its bos/eos tokens: the entry's strings are not used.
    let model = load(&spec(tmp.path(), json!({"bos_string": "[NOT USED]"}))).expect("loads");
    let g = model.generate_response(&user("hello"), &GenArgs::new(0.0, 6)).expect("generates");
    assert_eq!(g.prompt["inputs"], "<s><|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n");
    assert_eq!(g.prompt["max_new_tokens"], 6);
    assert_eq!(g.prompt["temperature"], 0.0);
    assert_eq!(g.prompt["return_full_text"], false);
    let completion = &g.response["response"];
    assert_eq!(completion["object"], "text_completion");
    assert!(completion["id"].as_str().is_some_and(|id| id.starts_with("cmpl-")));
    let usage = &completion["usage"];
    let (prompt_tokens, completion_tokens) =
        (usage["prompt_tokens"].as_u64().expect("n"), usage["completion_tokens"].as_u64().expect("n"));
    // <s> <|im_start|> u s e r \n he ll o <|im_end|> \n <|im_start|> a s s i s t a n t \n
    assert_eq!(prompt_tokens, 23);
    assert_eq!(usage["total_tokens"].as_u64(), Some(prompt_tokens + completion_tokens));
    let choice = &completion["choices"][0];
    match choice["finish_reason"].as_str() {
        Some("length") => assert_eq!(completion_tokens, 6),
        Some("stop") => assert!(completion_tokens < 6),
        other => panic!("finish_reason {other:?}"),
    }
    let text = choice["text"].as_str().expect("text");
    assert_eq!(g.response_text, text.trim().replace("<|im_end|>", ""));
    assert!(g.response["clem_player"]["call_duration"].is_string());
}

#[test]
fn custom_template_with_bos_eos_strings_when_the_gguf_lacks_them() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(_) = tiny_gguf(tmp.path(), "bare.gguf", &["--no-bos-eos", "--no-template"]) else { return };
    let entry = spec(
        tmp.path(),
        json!({
            "premade_chat_template": false,
            "custom_chat_template": "{{ bos_token }}|{% for m in messages %}{{ m.role }}:{{ m.content }}{% endfor %}|{{ eos_token }}",
            "bos_string": "[B]",
            "eos_string": "[E]",
        }),
    );
    let model = load(&entry).expect("loads");
    let g = model.generate_response(&user("hi"), &GenArgs::new(0.0, 2)).expect("generates");
    assert_eq!(g.prompt["inputs"], "[B]|user:hi|[E]");

    // premade_chat_template on a GGUF without a template: a clear error before loading.
    let Err(err) = load(&spec(tmp.path(), json!({}))) else { panic!("must fail") };
    let msg = err.to_string();
    assert!(msg.contains("tokenizer.chat_template") && msg.contains("custom_chat_template"), "{msg}");
}

#[test]
fn context_check_uses_the_gguf_context_and_the_entry_limit() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(_) = tiny_gguf(tmp.path(), "tiny.gguf", &["--ctx", "256"]) else { return };
    let model = load(&spec(tmp.path(), json!({}))).expect("loads");
    let err = model.generate_response(&user("hello"), &GenArgs::new(0.0, 240)).expect_err("too long");
    let ModelError::ContextExceeded(e) = err else { panic!("expected ContextExceeded, got {err}") };
    assert_eq!((e.context_size, e.tokens_used, e.tokens_left), (256, 263, -7));

    let limited = load(&spec(tmp.path(), json!({"context_size": 30}))).expect("loads");
    let err = limited.generate_response(&user("hello"), &GenArgs::new(0.0, 8)).expect_err("too long");
    assert!(matches!(err, ModelError::ContextExceeded(ref e) if e.context_size == 30 && e.tokens_used == 31), "{err}");
    assert!(limited.generate_response(&user("hello"), &GenArgs::new(0.0, 7)).is_ok());

    // In a batch only the item that does not fit fails, with its index.
    let batch = vec![user("a"), user(&"long ".repeat(60)), user("b")];
    let results = model.generate_batch_response(&batch, &GenArgs::new(0.0, 8));
    assert!(results[0].is_ok() && results[2].is_ok());
    match &results[1] {
        Err(ModelError::ContextExceeded(e)) => assert_eq!(e.batch_index, Some(1)),
        other => panic!("expected ContextExceeded, got {other:?}"),
    }
}

#[test]
fn batch_equals_single_runs_and_seeds_reproduce() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(_) = tiny_gguf(tmp.path(), "tiny.gguf", &[]) else { return };
    let model = load(&spec(tmp.path(), json!({}))).expect("loads");
    let prompts = vec![user("a"), user("hello there"), user("xyz xyz xyz xyz"), user("q")];
    let args = GenArgs::new(0.0, 12);
    let batch = model.generate_batch_response(&prompts, &args);
    for (p, b) in prompts.iter().zip(&batch) {
        let single = model.generate_response(p, &args).expect("single");
        let b = b.as_ref().expect("batched");
        assert_eq!(b.response["response"]["choices"], single.response["response"]["choices"]);
        assert_eq!(b.response_text, single.response_text);
    }

    let mut sampled = GenArgs::new(1.0, 12);
    sampled.extra.insert("seed".into(), json!(7));
    let text = |args: &GenArgs| {
        let g = model.generate_response(&prompts[1], args).expect("generates");
        g.response["response"]["choices"][0]["text"].as_str().expect("text").to_string()
    };
    let first = text(&sampled);
    assert_eq!(first, text(&sampled), "the same seed must give the same text");
    sampled.extra.insert("seed".into(), json!(8));
    assert_ne!(first, text(&sampled), "another seed should give another text on a random model");
}

#[test]
fn cot_content_goes_into_the_response_object() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(_) = tiny_gguf(tmp.path(), "tiny.gguf", &[]) else { return };
    let model = load(&spec(tmp.path(), json!({"cot_output": true, "cot_end_tag": "NEVER-IN-OUTPUT"}))).expect("loads");
    let g = model.generate_response(&user("hello"), &GenArgs::new(0.0, 6)).expect("generates");
    // The end tag never comes: everything is chain of thought, the answer is empty (clemcore's rule).
    assert_eq!(g.response_text, "");
    let text = g.response["response"]["choices"][0]["text"].as_str().expect("text");
    assert_eq!(g.response["cot_content"].as_str(), Some(text.trim().replace("<|im_end|>", "").as_str()));
}

#[test]
fn gpu_requests_fail_clearly_on_a_cpu_only_build() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(_) = tiny_gguf(tmp.path(), "tiny.gguf", &[]) else { return };
    for config in [json!({"execute_on": "gpu"}), json!({"gpu_layers_offloaded": 4})] {
        let Err(err) = load(&spec(tmp.path(), config)) else { panic!("must fail without a GPU backend") };
        assert!(err.to_string().contains("no GPU backend"), "{err}");
    }
    assert!(load(&spec(tmp.path(), json!({"execute_on": "cpu"}))).is_ok());
}

#[test]
fn split_gguf_with_additional_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(_) = tiny_gguf(tmp.path(), "split.gguf", &["--split-tensors", "10"]) else { return };
    let part = |i: u32| format!("split-{i:05}-of-00003.gguf");
    assert!(tmp.path().join(part(3)).is_file(), "the gguf package wrote 3 parts");
    let entry = spec(tmp.path(), json!({"filename": "*-00001-of-00003.gguf", "additional_files": [part(2), part(3)]}));
    let model = load(&entry).expect("llama.cpp loads the split GGUF");
    let g = model.generate_response(&user("hello"), &GenArgs::new(0.0, 4)).expect("generates");
    assert!(g.response["response"]["usage"]["completion_tokens"].as_u64().is_some());

    // A listed part that is not there is named.
    let entry = spec(tmp.path(), json!({"filename": "*-00001-of-00003.gguf", "additional_files": ["nope-*.gguf"]}));
    let Err(err) = load(&entry) else { panic!("must fail") };
    assert!(err.to_string().contains("nope-*.gguf"), "{err}");

    // A part that is missing on disk is named, whether listed or not.
    std::fs::remove_file(tmp.path().join(part(3))).expect("rm");
    let entry = spec(tmp.path(), json!({"filename": "*-00001-of-00003.gguf", "additional_files": [part(2)]}));
    let Err(err) = load(&entry) else { panic!("must fail") };
    assert!(err.to_string().contains(&part(3)), "{err}");
}
